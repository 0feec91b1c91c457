"""Refinement benchmark: one sampler call per pass (true batching) against one call per item, side
by side in one run, on the same items with the same per-item seeds and conditionings:

- detailer: 9 crops (one pass);
- chess refiner: 25 tiles of a 5 x 5 grid (two passes: 13 even tiles, then 12 odd).

Prints the wall time of each, the speedup, and the largest difference between an item refined in the
batch and the same item refined alone (decoded pixels in [-1, 1], before rounding). Then:

- per-item LoRAs: 9 crops with 3 different LoRAs (kohya, SGM-named kohya and PEFT files, seeded
  random weights) in one call, against one call per crop with its LoRA loaded and fused by
  diffusers (`load_lora_weights` + `fuse_lora`, then unfused and unloaded); and the overhead of
  per-row updates over one fused LoRA (the same 9 crops, one LoRA, one call each way);
- memory: the even pass (13 tiles) of a 5 x 5 chess refinement of a 4096² picture, at
  `--budget-mb` and at the automatic budget, with the peak memory measured (CUDA's allocator, or
  the process's resident set on a CPU).

Tiny profile (the trained tiny world) on CPU by default. `--sdxl-unet` builds the real SDXL UNet
and VAE architectures with random weights (for a GPU machine; 1024² tiles take minutes each on a
CPU).

    .venv/bin/python benchmarks/bench_refine.py --repeat 3

`--comfyui DIR` measures the ComfyUI nodes instead (benchmarks/comfyui_refine.py), run with the
Python ComfyUI runs in:

    PY benchmarks/bench_refine.py --comfyui DIR --home LUNA_HOME --repeat 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from luna_core.refine.batching import batching_table, budget_pass, lora_batching
from luna_core.refine.options import SamplerSettings
from luna_core.refine.sampler import SDXLSampler


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument(
        "--image",
        type=int,
        default=0,
        help="chess image side (default: 4 tiles of the model's size)",
    )
    parser.add_argument(
        "--sdxl-unet", action="store_true", help="real SDXL UNet/VAE architecture, random weights"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument(
        "--budget-mb", type=float, default=1024.0, help="the memory budget of the 4096² pass"
    )
    parser.add_argument(
        "--big", type=int, default=4096, help="side of the chess picture of the memory figure"
    )
    parser.add_argument(
        "--skip", action="append", default=[], choices=["batching", "lora", "memory"]
    )
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument(
        "--comfyui", type=Path, help="a ComfyUI folder: the graph refiners in it instead"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path.home() / ".cache/luna/fullsize-random/v1/sdxl-random.safetensors",
        help="--comfyui: the SDXL checkpoint ComfyUI loads",
    )
    parser.add_argument("--home", default="", help="--comfyui: a built Luna home")
    args = parser.parse_args()
    if args.comfyui:
        from comfyui_refine import run  # a sibling script: ComfyUI only where asked

        figures = run(args.comfyui, args.checkpoint, args.home, args.repeat, min(args.steps, 3))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    work = Path(tempfile.mkdtemp(prefix="luna-bench-refine-"))
    if args.sdxl_unet:
        model, (seq, width, pooled) = _random_sdxl(work / "sdxl"), (77, 2048, 1280)
        label = "SDXL UNet architecture, random weights"
    else:
        from luna_core.models.profiles import tiny_profile
        from luna_core.models.tiny import ensure_tiny_models

        model, (seq, width, pooled) = tiny_profile(ensure_tiny_models()).sdxl_model, (77, 96, 48)
        label = "tiny profile (trained tiny world)"
    sampler = SDXLSampler(model, None, device, dtype)
    settings = SamplerSettings(
        strength=args.strength, steps=args.steps, guidance_scale=5.0, seed=0, batch_size=64
    )
    side = args.image or sampler.native_size * 4
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    print(
        f"{label}; device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, "
        f"{args.steps} steps at strength {args.strength}, median of {args.repeat}"
    )

    figures = {"label": label, "device": str(device)}
    if "batching" not in args.skip:
        table = batching_table(sampler, picture, settings, args.repeat, (seq, width, pooled))
        figures.update({"tile": table.pop("tile"), "crop": table.pop("crop")})
        for name, row in table.items():
            figures[name] = row
            print(
                f"{name:34s} batched {row['batched_s']:7.3f}s   one call per item "
                f"{row['one_call_per_item_s']:7.3f}s   "
                f"speedup {row['speedup']:5.2f}x   max item difference {row['max_item_diff']:.2e}"
            )
    if "lora" not in args.skip:
        figures["per-item LoRA"] = row = _lora_figure(
            sampler, picture, work, settings, args.repeat, (seq, width, pooled)
        )
        t = row["seconds"]
        print(
            f"per-item LoRA, {row['items']} crops, {row['loras']} LoRAs: batched "
            f"{t['batched']:.3f}s   sequential "
            f"load+fuse per crop {t['sequential']:.3f}s   speedup {row['speedup']:.2f}x   max "
            "item difference "
            f"{row['max_item_diff']:.2e}"
        )
        print(
            f"per-row LoRA vs one fused LoRA ({row['items']} crops, one call each): "
            f"{t['per-row, one LoRA']:.3f}s vs "
            f"{t['fused, one LoRA']:.3f}s   overhead {100 * row['per_row_overhead']:+.1f} %"
        )
    if "memory" not in args.skip:
        figures["memory"] = rows = budget_pass(
            sampler,
            args.big,
            5,
            [args.budget_mb, 0.0],
            replace(settings, batch_size=0, steps=2),
            (seq, width, pooled),
        )
        for row in rows:
            print(
                f"chess 5x5 of {args.big}², even pass ({row['tiles']} tiles of {row['tile']}), "
                "budget "
                f"{row['budget_mb']:,.0f} MB: peak {row['peak_mb']:,.0f} MB "
                f"({row['measured_as']}), "
                f"{row['seconds']:.1f}s; {row['plan']}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def _lora_figure(sampler, picture, work: Path, settings, repeat: int, widths) -> dict:
    from luna_core.samples.loras import write_sample_lora

    native = sampler.native_size
    side = min(picture.shape[:2])
    crops = [
        np.asarray(
            Image.fromarray(picture[y : y + side // 3, x : x + side // 3]).resize((native, native))
        )
        for y in (0, side // 3, 2 * side // 3)
        for x in (0, side // 3, 2 * side // 3)
    ]
    files = {
        f"lora{i}": str(write_sample_lora(work / f"lora{i}.safetensors", sampler.unet, i, layout))
        for i, layout in enumerate(("kohya", "kohya-sgm", "peft"))
    }
    loras = [(f"lora{i % 3}", 0.5 + 0.25 * (i % 3)) for i in range(len(crops))]
    return lora_batching(sampler, crops, loras, files, settings, repeat, widths)


def _random_sdxl(dest: Path) -> str:
    """The SDXL base UNet and VAE architectures (diffusers' default SDXL configs) with random
    weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=128,
        cross_attention_dim=2048,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ).save_pretrained(dest / "unet")
    AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        sample_size=1024,
        scaling_factor=0.13025,
    ).save_pretrained(dest / "vae")
    EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    ).save_pretrained(dest / "scheduler")
    (dest / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "StableDiffusionXLImg2ImgPipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
                "text_encoder": [None, None],
                "text_encoder_2": [None, None],
                "tokenizer": [None, None],
                "tokenizer_2": [None, None],
                "image_encoder": [None, None],
                "feature_extractor": [None, None],
                "requires_aesthetics_score": False,
                "force_zeros_for_empty_prompt": True,
            }
        )
    )
    return str(dest)


if __name__ == "__main__":
    sys.exit(main())
