"""The `tiny` profile: SDXL's encoder classes with tiny configs and fixed-seed weights.

Built once under the Luna home and saved with `save_pretrained`, then loaded through the same
`from_pretrained` code as the real models. Tokenizers use the real CLIP BPE vocabulary, so token
counts and 77-token truncation are real. Random weights: no figure from them is a CLIP figure.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from luna_core.models.clip_vocab import clip_tokenizer

TINY_VERSION = "2"
IMAGE_SIZE = 64
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def _build(dest: Path) -> None:
    # torch and the model libraries take about a second to import: only code that runs a model pays for it
    import torch
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=IMAGE_SIZE, patch_size=8, projection_dim=32,
    ))
    vision.save_pretrained(dest / "vision")
    (dest / "vision" / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": IMAGE_SIZE},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD, "do_convert_rgb": True,
    }, indent=2))

    common = dict(vocab_size=49408, max_position_embeddings=77, num_hidden_layers=2, num_attention_heads=2,
                  bos_token_id=49406, eos_token_id=49407, hidden_act="gelu")
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, pad_token_id=49407, **common)).save_pretrained(
        dest / "sdxl" / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=64, intermediate_size=128, projection_dim=48, pad_token_id=0,
                                               **common)).save_pretrained(dest / "sdxl" / "text_encoder_2")
    clip_tokenizer("<|endoftext|>").save_pretrained(dest / "sdxl" / "tokenizer")
    clip_tokenizer("!").save_pretrained(dest / "sdxl" / "tokenizer_2")
    _build_sdxl_refiner_parts(dest / "sdxl", cross_attention_dim=32 + 64, pooled_dim=48)


def _build_sdxl_refiner_parts(sdxl_dir: Path, cross_attention_dim: int, pooled_dim: int) -> None:
    """A tiny SDXL UNet, VAE and scheduler beside the text encoders, with model_index.json, so the
    folder loads as a diffusers SDXL (img2img) pipeline exactly as the real base model does."""
    # torch and the model libraries take about a second to import: only code that runs a model pays for it
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    time_embed_dim = 8  # SDXL adds 6 size/crop numbers, each embedded in this many channels
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=cross_attention_dim,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=pooled_dim + 6 * time_embed_dim, norm_num_groups=32,
    )
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        sample_size=64, norm_num_groups=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, unet=unet, scheduler=scheduler,
        text_encoder=CLIPTextModel.from_pretrained(sdxl_dir / "text_encoder"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(sdxl_dir / "text_encoder_2"),
        tokenizer=CLIPTokenizer.from_pretrained(sdxl_dir / "tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(sdxl_dir / "tokenizer_2"),
        requires_aesthetics_score=False, force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(sdxl_dir)


def ensure_tiny_models(root: Path) -> Path:
    """Build the tiny models under `root` unless a complete build is there; safe across processes."""
    root = Path(root)
    marker = root / "complete.json"
    if not (marker.exists() and json.loads(marker.read_text()).get("version") == TINY_VERSION):
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / ".tiny-build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two asset processes may ask at once: one builds
            if not (marker.exists() and json.loads(marker.read_text()).get("version") == TINY_VERSION):
                staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root.parent))
                try:
                    _build(staging)
                    (staging / "complete.json").write_text(json.dumps({"version": TINY_VERSION}))
                    if root.exists():
                        shutil.rmtree(root)
                    os.replace(staging, root)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)  # a failed build (disk full…) leaves nothing
                    raise
    return root


IP_ADAPTER_WEIGHTS = "ip-adapter_tiny.safetensors"


def ensure_tiny_ip_adapter(tiny_root: Path) -> Path:
    """A tiny IP-Adapter for the tiny SDXL UNet (random, fixed-seed weights) laid out as h94/IP-Adapter
    lays out its SDXL files: the weights beside an `image_encoder/` folder (the tiny CLIP-ViT), so it
    loads through diffusers' own `load_ip_adapter`. Returns the weights file."""
    tiny_root = Path(tiny_root)
    dest = tiny_root.parent / "tiny-ip-adapter"
    weights = dest / IP_ADAPTER_WEIGHTS
    if weights.exists():
        return weights
    with open(tiny_root.parent / ".tiny-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if weights.exists():
            return weights
        staging = Path(tempfile.mkdtemp(prefix=".tiny-ip-", dir=tiny_root.parent))
        try:
            _build_ip_adapter(tiny_root, staging)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return weights


def _build_ip_adapter(tiny_root: Path, dest: Path) -> None:
    # torch and the model libraries take about a second to import: only code that runs a model pays for it
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    unet = UNet2DConditionModel.from_pretrained(tiny_root / "sdxl" / "unet")
    config = json.loads((tiny_root / "vision" / "config.json").read_text())
    image_dim = config["projection_dim"]
    cross_dim = unet.config.cross_attention_dim
    blocks = list(unet.config.block_out_channels)
    generator = torch.Generator().manual_seed(0)

    def weight(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    tokens = 4  # IP-Adapter (base): the image embedding becomes 4 extra context tokens
    state = {"image_proj.proj.weight": weight(cross_dim * tokens, image_dim),
             "image_proj.proj.bias": torch.zeros(cross_dim * tokens),
             "image_proj.norm.weight": torch.ones(cross_dim), "image_proj.norm.bias": torch.zeros(cross_dim)}
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
