"""Model profiles: which vision encoder and which SDXL text-encoder pair Luna uses, and on what
device.

`sdxl` is the real one (weights from a local path or the Hugging Face cache, through the ordinary
`from_pretrained` code); `tiny` has the same classes with tiny configs, trained once per machine on
the sample generator's world (luna_core.models.tiny) and then loaded through exactly the same code.
Its numbers check the method on generated shapes; they are not CLIP's or SDXL's.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from luna_core.errors import LunaConfigError
from luna_core.models import single_file
from luna_core.models.references import check_model_reference
from luna_core.models.tiny import TINY_VERSION, ensure_tiny_models

log = logging.getLogger(__name__)

AUTO = "auto"  # device and dtype: chosen from the machine
PROFILES = ("sdxl", "tiny")  # the real models; tiny ones built locally (demo, tests, CI)


@dataclass(frozen=True)
class ModelProfile:
    name: str
    vision_model: (
        str  # hub id or local folder of a CLIPVisionModelWithProjection + preprocessor_config.json
    )
    sdxl_model: (
        str  # hub id or local folder with tokenizer/, tokenizer_2/, text_encoder/, text_encoder_2/
    )
    vision_revision: str | None = None
    sdxl_revision: str | None = None
    vision_id: str | None = None  # identity recorded in the vault (defaults to the model id)
    sdxl_id: str | None = None
    default_dtype: str = "auto"
    # Vision-embedding cosine at or above which two images are near-duplicates (resized, re-encoded
    # or lightly edited copies of one picture): they share a split and leave one another out of the
    # vault's leave-one-out. 0.95 is the usual CLIP-ViT figure for such copies.
    near_duplicate_cosine: float = 0.95
    # The vision embedding lives in SDXL's pooled text space (trained so), making CLIP-T meaningful.
    shared_space: bool = False
    trained: bool = True  # False: random weights, whose figures measure nothing

    @property
    def vision_key(self) -> str:
        return store_key(self.vision_id or self.vision_model, self.vision_revision)

    @property
    def text_key(self) -> str:
        return store_key(self.sdxl_id or self.sdxl_model, self.sdxl_revision)


SDXL = ModelProfile(
    name="sdxl",
    vision_model="laion/CLIP-ViT-H-14-laion2B-s32B-b79K",  # the image encoder IP-Adapter SDXL uses
    sdxl_model="stabilityai/stable-diffusion-xl-base-1.0",
)


def tiny_profile(root: Path) -> ModelProfile:
    """The tiny profile over a trained tiny world at `root` (see luna_core.models.tiny); its
    revision names the recipe, so stores made with another build are re-embedded by the
    data-version rules."""
    revision = f"v{TINY_VERSION}-{Path(root).name}"
    return ModelProfile(
        name="tiny",
        vision_model=str(root / "vision"),
        sdxl_model=str(root / "sdxl"),
        vision_id="luna-tiny/clip-vit",
        sdxl_id="luna-tiny/sdxl-text",
        vision_revision=revision,
        sdxl_revision=revision,
        default_dtype="float32",
        shared_space=True,
        # Measured on the trained tiny tower (150 held-out 256 px pictures): resized and JPEG copies
        # score
        # >= 0.9999 (a copy cropped by 8 px as low as 0.73); the same prompt at another seed p95
        # 0.990, max 0.997; unrelated pictures max 0.997 (1 pair in 11,000). At 0.995: 76 % of all
        # copies linked (every resize and re-encode), 1.3 % of reseeded pairs, no unrelated pair.
        near_duplicate_cosine=0.995,
    )


def _drop_home_tiny_models(models_dir: Path) -> None:
    """Homes made before the trained tiny world kept random tiny models of their own; the machine's
    trained world replaces them (their stores are re-embedded, as a new revision asks)."""
    old = Path(models_dir) / "tiny"
    if old.is_dir() and (old / "complete.json").exists():
        log.info("replacing %s (random tiny models) with this machine's trained tiny world", old)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(Path(models_dir) / "tiny-ip-adapter", ignore_errors=True)


def with_named_model(
    profile: ModelProfile, part: str, model: str, models_dir: Path
) -> ModelProfile:
    """The profile with the `part` ('vision' or 'sdxl') model a person named: a folder or hub id
    is its own identity; a single file is checked now (one line if it is not the right kind) and
    identified by its content, with its file name as the label."""
    what = "vision model" if part == "vision" else "SDXL model"
    check_model_reference(model, what)
    if not single_file.is_single_file(model):
        fields = {f"{part}_model": model, f"{part}_id": None, f"{part}_revision": None}
        return replace(profile, **fields)
    single_file.check_single_file(model, what, "clip_vision" if part == "vision" else "sdxl")
    path = Path(model).expanduser()
    fields = {
        f"{part}_model": str(path),
        f"{part}_id": path.name,
        f"{part}_revision": single_file.content_identity(path, models_dir),
    }
    return replace(profile, **fields)


def store_key(model_id: str, revision: str | None) -> str:
    """A file-name-safe identity: model id (hub id or path) plus revision."""
    text = f"{model_id}@{revision or 'main'}"
    return re.sub(r"[^A-Za-z0-9._@-]+", "--", text).strip("-")


def resolve_profile(
    name: str,
    models_dir: Path,
    vision_model: str | None = None,
    sdxl_model: str | None = None,
) -> ModelProfile:
    """The named profile (`LunaHome.model_profile()` chooses it), with any model overrides
    applied."""
    if name == "sdxl":
        profile = SDXL
    elif name == "tiny":
        _drop_home_tiny_models(models_dir)
        profile = tiny_profile(ensure_tiny_models())
    else:
        raise LunaConfigError(
            f"unknown model profile {name!r}: choose one of {', '.join(PROFILES)}"
        )
    if vision_model:
        profile = with_named_model(profile, "vision", vision_model, models_dir)
    if sdxl_model:
        profile = with_named_model(profile, "sdxl", sdxl_model, models_dir)
    return profile


def choose_device(device: str = AUTO):
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError as exc:
        raise LunaConfigError(f"unknown device {device!r}: {exc}") from None
    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise LunaConfigError(
                f"device {device!r} asked for, but this machine has no usable CUDA GPU "
                "(use --device cpu or auto)"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise LunaConfigError(
                f"device {device!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif chosen.type not in ("cpu", "mps"):
        raise LunaConfigError(f"device {device!r} is not supported: use auto, cpu or cuda[:N]")
    return chosen


def choose_dtype(device, dtype: str = AUTO):
    """CUDA: bf16 where supported, else fp16. CPU: bf16 where the CPU has native bf16, else fp32."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
        "fp64": torch.float64,
    }  # float64: exactness checks, never speed
    if dtype != "auto":
        if dtype not in names:
            raise LunaConfigError(
                f"unknown dtype {dtype!r}: choose one of {', '.join(names)} or auto"
            )
        return names[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native_bf16 = (
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return torch.bfloat16 if native_bf16 else torch.float32
