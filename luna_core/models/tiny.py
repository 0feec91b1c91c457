"""The `tiny` profile: SDXL's model classes with tiny configs, trained on the sample generator's
world.

Trained once per machine (luna_core.models.tiny_world) into a cache outside any checkout or home,
keyed by the training recipe's hash, then loaded through the same `from_pretrained` code as the real
models. Tokenizers use the real CLIP BPE vocabulary, so token counts and 77-token truncation are
real. The IP-Adapter stays random (fixed-seed): nothing trains it. Trained on generated shapes: a
check of the method, not of SDXL quality, and no figure from it is a CLIP figure.

    CACHE/                      $LUNA_TINY_CACHE, else $XDG_CACHE_HOME/luna/tiny-world
    (~/.cache/...)
        .build.lock             one process trains; the others wait and use its result
        <recipe hash>/          vision/, sdxl/ (a diffusers SDXL folder), ip-adapter/, complete.json
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from tqdm.auto import tqdm

from luna_core.models import tiny_world, tiny_world_unet
from luna_core.models.clip_vocab import clip_tokenizer
from luna_core.models.encoders import SDXLTextEncoder
from luna_core.models.tiny_world import (
    ARCHITECTURE,
    CLIP_MEAN,
    CLIP_STD,
    IMAGE_SIZE,
    TEXT_COMMON,
    tiny_cache_dir,
)

log = logging.getLogger(__name__)

TINY_VERSION = "3"


def _complete(root: Path, key: str) -> bool:
    marker = root / "complete.json"
    try:
        return json.loads(marker.read_text()).get("recipe_hash") == key
    except (OSError, ValueError):
        return False


def ensure_tiny_models(progress: bool = True, rebuild: bool = False) -> Path:
    """The trained tiny world, trained now unless this machine's cache holds it (safe across
    processes: one trains under the lock, the others wait for it and use its result). `rebuild`
    trains anew."""
    key = tiny_world.recipe_hash()
    root = tiny_cache_dir() / key
    if _complete(root, key) and not rebuild:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / ".build.lock", "w") as lock:
        if not rebuild:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("another process is training the tiny world (%s); waiting for it", root)
                fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(root, key) and not rebuild:
            return root
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=root.parent))
        try:
            _train(staging, key, progress)
            if root.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{key}-old-", dir=root.parent))
                os.replace(root, old / "world")  # readers of the old build keep their open files
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, root)
        except BaseException:
            # a failed or killed build (disk full, Ctrl-C) leaves nothing
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return root


def _train(dest: Path, key: str, progress: bool) -> None:
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    recipe, seed = tiny_world.RECIPE, tiny_world.RECIPE["seed"]
    bar = tqdm(
        total=tiny_world.total_steps(recipe),
        unit="step",
        desc="training the tiny world",
        disable=not progress,
    )
    seconds: dict[str, float] = {}
    clock = {"part": None, "since": time.perf_counter()}

    def update(part: str, steps: int) -> None:
        if clock["part"] != part:
            bar.set_description(f"training the tiny world: {part}")
            clock["part"] = part
        bar.update(steps)

    progress_hook = tiny_world.Progress(update)
    torch.manual_seed(seed)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**ARCHITECTURE["vision"]))
    text_encoder = CLIPTextModel(CLIPTextConfig(**ARCHITECTURE["text_encoder"], **TEXT_COMMON))
    text_encoder_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(**ARCHITECTURE["text_encoder_2"], **TEXT_COMMON)
    )
    tokenizer, tokenizer_2 = clip_tokenizer("<|endoftext|>"), clip_tokenizer("!")
    vae = AutoencoderKL(**ARCHITECTURE["vae"])
    unet = UNet2DConditionModel(**ARCHITECTURE["unet"])
    scheduler = EulerDiscreteScheduler(**ARCHITECTURE["scheduler"])

    started = time.perf_counter()
    tiny_world.train_clip(vision, text_encoder_2, tokenizer_2, recipe["clip"], seed, progress_hook)
    seconds["clip"] = time.perf_counter() - started
    vision.save_pretrained(dest / "vision")
    (dest / "vision" / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": IMAGE_SIZE},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD,
                "do_convert_rgb": True,
            },
            indent=2,
        )
    )
    sdxl = dest / "sdxl"
    text_encoder.save_pretrained(sdxl / "text_encoder")
    text_encoder_2.save_pretrained(sdxl / "text_encoder_2")
    tokenizer.save_pretrained(sdxl / "tokenizer")
    tokenizer_2.save_pretrained(sdxl / "tokenizer_2")

    started = time.perf_counter()
    tiny_world.train_vae(vae, recipe["vae"], seed, progress_hook)
    seconds["vae"] = time.perf_counter() - started
    started = time.perf_counter()
    # the vault's own encoding
    encoder = SDXLTextEncoder(str(sdxl), None, torch.device("cpu"), torch.float32)
    tiny_world_unet.train_unet(
        unet, vae, encoder, dict(scheduler.config), recipe["unet"], seed, progress_hook
    )
    seconds["unet"] = time.perf_counter() - started
    bar.close()
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        unet=unet,
        scheduler=scheduler,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(sdxl)
    _build_ip_adapter(dest)
    (dest / "complete.json").write_text(
        json.dumps(
            {
                "version": TINY_VERSION,
                "recipe_hash": key,
                "recipe": recipe,
                "seconds": {k: round(v, 1) for k, v in seconds.items()},
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )


IP_ADAPTER_WEIGHTS = "ip-adapter_tiny.safetensors"


def ensure_tiny_ip_adapter(tiny_root: Path) -> Path:
    """The tiny IP-Adapter's weights file (built with the world: see `_build_ip_adapter`)."""
    weights = Path(tiny_root) / "ip-adapter" / IP_ADAPTER_WEIGHTS
    if not weights.exists():
        raise FileNotFoundError(
            f"{weights} is missing: rebuild the tiny world (luna models rebuild-tiny)"
        )
    return weights


def _build_ip_adapter(tiny_root: Path) -> None:
    """A tiny IP-Adapter for the tiny SDXL UNet (random, fixed-seed weights) laid out as
    h94/IP-Adapter lays out its SDXL files: the weights beside an `image_encoder/` folder (the
    tiny CLIP-ViT), so it loads through diffusers' own `load_ip_adapter`."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    dest = tiny_root / "ip-adapter"
    dest.mkdir()
    unet = UNet2DConditionModel.from_pretrained(
        tiny_root / "sdxl" / "unet", low_cpu_mem_usage=False
    )
    config = json.loads((tiny_root / "vision" / "config.json").read_text())
    image_dim = config["projection_dim"]
    cross_dim = unet.config.cross_attention_dim
    blocks = list(unet.config.block_out_channels)
    generator = torch.Generator().manual_seed(0)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    tokens = 4  # IP-Adapter (base): the image embedding becomes 4 extra context tokens
    state = {
        "image_proj.proj.weight": weight(cross_dim * tokens, image_dim),
        "image_proj.proj.bias": torch.zeros(cross_dim * tokens),
        "image_proj.norm.weight": torch.ones(cross_dim),
        "image_proj.norm.bias": torch.zeros(cross_dim),
    }
    key = 1  # numbered as the reference checkpoints are: odd numbers, one per cross-attention layer
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = list(reversed(blocks))[int(name[len("up_blocks.")])]
        else:
            hidden = blocks[int(name[len("down_blocks.")])]
        state[f"ip_adapter.{key}.to_k_ip.weight"] = weight(hidden, cross_dim)
        state[f"ip_adapter.{key}.to_v_ip.weight"] = weight(hidden, cross_dim)
        key += 2
    save_file(state, str(dest / IP_ADAPTER_WEIGHTS))
    shutil.copytree(tiny_root / "vision", dest / "image_encoder")
