"""LoRA files for a UNet, with seeded random low-rank weights, written in the layouts people's files
come in (kohya with diffusers or SDXL's original layer names, diffusers/PEFT): the demo's LoRA
folder (named as the sample library's `<lora:…>` tags) and the fixtures of the LoRA tests and
benchmark. They change the UNet's output measurably; they were not trained and teach it nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from luna_core.files import write_atomically
from luna_core.refine.lora_names import sgm_name

LAYOUTS = ("kohya", "kohya-sgm", "peft")
ATTENTION_LAYERS = ("to_q", "to_k", "to_v", "to_out.0")


def lora_layers(unet, convolutions: bool = True) -> list[str]:
    """The UNet layers a sample LoRA patches: every attention projection, and (with `convolutions`)
    the resnets' 3x3 convolutions, as LoCon files do."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    names = []
    for name, module in unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(ATTENTION_LAYERS):
            names.append(name)
        elif (
            convolutions
            and isinstance(module, torch.nn.Conv2d)
            and ".resnets." in name
            and name.endswith("conv1")
        ):
            names.append(name)
    return names


def write_sample_lora(
    path: str | Path,
    unet,
    seed: int,
    layout: str = "kohya",
    rank: int = 4,
    alpha: float = 2.0,
    strength: float = 0.5,
    text_encoder_layers: int = 0,
    convolutions: bool = True,
) -> Path:
    """A LoRA for `unet` at `path`. `strength` sets the size of the update relative to each layer's
    own weights; `text_encoder_layers` adds that many (skipped) text-encoder layers, as real
    files carry."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch
    from safetensors.torch import save

    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} is not one of {', '.join(LAYOUTS)}")
    rng = np.random.default_rng(seed)
    modules = dict(unet.named_modules())
    lpb = int(unet.config.layers_per_block)
    up_attention = ["CrossAttn" in t for t in unet.config.up_block_types]
    tensors: dict[str, torch.Tensor] = {}
    for name in lora_layers(unet, convolutions):
        module = modules[name]
        weight = module.weight.detach().float()
        if isinstance(module, torch.nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        else:
            down_shape, up_shape = (
                (rank, module.in_channels, *module.kernel_size),
                (module.out_channels, rank, 1, 1),
            )
        fan_in = int(np.prod(down_shape[1:]))
        down = rng.normal(size=down_shape) / np.sqrt(fan_in)
        # scale * up @ down has `strength` times the RMS of the layer's own weights
        spread = (
            strength
            * float(weight.pow(2).mean().sqrt())
            / ((alpha / rank) * np.sqrt(rank / fan_in))
        )
        up = rng.normal(size=up_shape) * spread
        down_t, up_t = (
            torch.tensor(down, dtype=torch.float32),
            torch.tensor(up, dtype=torch.float32),
        )
        if layout == "peft":
            tensors[f"unet.{name}.lora_A.weight"], tensors[f"unet.{name}.lora_B.weight"] = (
                down_t,
                up_t,
            )
        else:
            flat = (name if layout == "kohya" else sgm_name(name, lpb, up_attention)).replace(
                ".", "_"
            )
            tensors[f"lora_unet_{flat}.lora_down.weight"] = down_t
            tensors[f"lora_unet_{flat}.lora_up.weight"] = up_t
            tensors[f"lora_unet_{flat}.alpha"] = torch.tensor(alpha)
    for i in range(text_encoder_layers):
        prefix = f"lora_te1_text_model_encoder_layers_{i}_self_attn_q_proj"
        tensors[f"{prefix}.lora_down.weight"] = torch.zeros(rank, 8)
        tensors[f"{prefix}.lora_up.weight"] = torch.zeros(8, rank)
    metadata = {"luna_sample": f"seed {seed}, random weights"}
    # diffusers keeps the PEFT config (rank, alpha) in the header, as save_lora_weights does
    if layout == "peft":
        metadata["lora_adapter_metadata"] = json.dumps(
            {
                "unet.r": rank,
                "unet.lora_alpha": alpha,
                "unet.target_modules": lora_layers(unet, convolutions),
            }
        )
    else:
        metadata.update({"ss_network_dim": str(rank), "ss_network_alpha": str(alpha)})
    data = save(tensors, metadata=metadata)
    return write_atomically(Path(path), lambda tmp: Path(tmp).write_bytes(data))
