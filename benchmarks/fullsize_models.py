"""RANDOM-weight models at the real sizes, built once and cached: CLIP ViT-H/14 (IP-Adapter SDXL's
image tower), SDXL's CLIP-L and OpenCLIP bigG, SDXL's UNet and VAE. Each is kept both as a folder
(diffusers / Hugging Face) and as one single file (an SGM-layout SDXL checkpoint; a ComfyUI
clip_vision file), so the benchmarks load them through the same code as a person's models.

Their figures are speeds, memory and bytes at the real widths: random weights answer nothing, and
no figure of theirs is a CLIP or SDXL quality figure.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from luna_core.models import sgm_layout
from luna_core.models.single_file import SDXL_BASE, VISION_CONFIGS

FULLSIZE_VERSION = "1"


@dataclass(frozen=True)
class ModelFiles:
    sdxl_folder: Path
    sdxl_file: Path
    vision_folder: Path
    vision_file: Path

    def sizes(self) -> dict[str, int]:
        return {
            "sdxl_file_bytes": self.sdxl_file.stat().st_size,
            "vision_file_bytes": self.vision_file.stat().st_size,
        }


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "luna" / "fullsize-random"


def files_in(root: Path) -> ModelFiles:
    return ModelFiles(
        root / "sdxl",
        root / "sdxl-random.safetensors",
        root / "vision",
        root / "clip-vit-h-14-random.safetensors",
    )


def ensure_fullsize_models(
    cache: Path | None = None, say=print, single_files: bool = True
) -> ModelFiles:
    """The cached models, built now (a few minutes on 2 cores, about 16 GB on disk) if absent;
    without `single_files`, the folders alone (half the disk: what the GPU suite loads)."""
    root = Path(cache or default_cache()) / f"v{FULLSIZE_VERSION}"
    files = files_in(root)
    if (root / "complete.json").exists():
        return files
    if not single_files and (root.with_name(root.name + ".folders") / "complete.json").exists():
        return files_in(root.with_name(root.name + ".folders"))
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    import torch

    started = time.perf_counter()
    staging = root.with_name(root.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: the UNet alone is 5 GB so, 10 in fp32
    # on a GPU the random initialisation takes seconds, not minutes
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with device:
            _save_random_sdxl(files_in(staging).sdxl_folder, say)
            _save_random_vision(files_in(staging).vision_folder)
    finally:
        torch.set_default_dtype(previous)
    if not single_files:
        (staging / "complete.json").write_text("{}")
        folders = root.with_name(root.name + ".folders")
        shutil.rmtree(folders, ignore_errors=True)
        staging.rename(folders)
        return files_in(folders)
    say("writing the single files (SGM checkpoint, clip_vision)…")
    staged = files_in(staging)
    sgm_layout.save_sdxl_single_file(staged.sdxl_folder, staged.sdxl_file, torch.bfloat16)
    sgm_layout.save_clip_vision_file(staged.vision_folder, staged.vision_file, torch.bfloat16)
    (staging / "complete.json").write_text(
        json.dumps({"seconds": round(time.perf_counter() - started, 1), **staged.sizes()})
    )
    shutil.rmtree(root, ignore_errors=True)
    staging.rename(root)
    say(f"built the random full-size models in {time.perf_counter() - started:.0f}s → {root}")
    return files


def _save_random_sdxl(folder: Path, say) -> None:
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from luna_core.models.clip_vocab import clip_tokenizer

    folder.mkdir(parents=True)
    shutil.copy(SDXL_BASE / "model_index.json", folder / "model_index.json")
    shutil.copytree(SDXL_BASE / "scheduler", folder / "scheduler")
    clip_tokenizer("<|endoftext|>").save_pretrained(folder / "tokenizer")
    clip_tokenizer("!").save_pretrained(folder / "tokenizer_2")
    for cls, part in (
        (CLIPTextModel, "text_encoder"),
        (CLIPTextModelWithProjection, "text_encoder_2"),
    ):
        say(f"building a random {part} (SDXL's configuration)…")
        config = CLIPTextConfig.from_json_file(str(SDXL_BASE / part / "config.json"))
        cls(config).save_pretrained(folder / part)
    for cls, part in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        say(f"building a random {part} (SDXL's configuration)…")
        config = json.loads((SDXL_BASE / part / "config.json").read_text())
        model = cls.from_config(config)
        model.save_pretrained(folder / part)
        del model


def _save_random_vision(folder: Path) -> None:
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    vit_h = VISION_CONFIGS[0]
    config = CLIPVisionConfig.from_json_file(str(vit_h / "config.json"))
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    shutil.copy(vit_h / "preprocessor_config.json", folder / "preprocessor_config.json")
