"""Refinement benchmark: one sampler call per pass (true batching) against one call per item, side by
side in one run, on the same items with the same per-item seeds and conditionings:

- detailer: 9 crops (one pass);
- chess refiner: 25 tiles of a 5 x 5 grid (two passes: 13 even tiles, then 12 odd).

Prints the wall time of each, the speedup, and the largest difference between an item refined in the
batch and the same item refined alone (decoded pixels in [-1, 1], before rounding). Tiny profile on
CPU by default (random weights: speed and exactness only). `--sdxl-unet` builds the real SDXL UNet
architecture with random weights (for a GPU machine; 1024² tiles take minutes each on a CPU).

    .venv/bin/python benchmarks/bench_refine.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from luna_core.refine.geometry import Rect, chess_tiles, detail_crops
from luna_core.refine.sampler import ItemConditioning, SamplerSettings, SDXLSampler, item_seed


def _conditions(n: int, seq: int, width: int, pooled: int, seed: int) -> list[ItemConditioning]:
    rng = np.random.default_rng(seed)
    return [ItemConditioning(rng.normal(size=(seq, width)).astype(np.float32), rng.normal(size=pooled).astype(np.float32),
                             np.zeros((seq, width), np.float32), np.zeros(pooled, np.float32)) for _ in range(n)]


def measure(sampler: SDXLSampler, images: list, places: list[Rect], original: tuple[int, int], target: tuple[int, int],
            settings: SamplerSettings, repeat: int, pass_index: int, seq: int, width: int, pooled: int) -> dict:
    conditions = _conditions(len(images), seq, width, pooled, seed=pass_index)
    time_ids = np.array([[*original, r.y, r.x, *target] for r in places], np.float32)
    seeds = [item_seed(settings.seed, pass_index, i) for i in range(len(images))]
    batched_times, single_times = [], []
    for _ in range(repeat):  # alternate, so both see the same machine state
        started = time.perf_counter()
        batched = sampler.refine(images, conditions, time_ids, seeds, settings)
        batched_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        single = [sampler.refine([images[i]], [conditions[i]], time_ids[i : i + 1], [seeds[i]], settings)[0]
                  for i in range(len(images))]
        single_times.append(time.perf_counter() - started)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    diff = max(float(np.max(np.abs(b - s))) for b, s in zip(batched, single))
    return {"items": len(images), "batched_s": float(np.median(batched_times)),
            "one_call_per_item_s": float(np.median(single_times)), "max_item_diff": diff}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--image", type=int, default=0, help="chess image side (default: 4 tiles of the model's size)")
    parser.add_argument("--sdxl-unet", action="store_true", help="real SDXL UNet/VAE architecture, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    work = Path(tempfile.mkdtemp(prefix="luna-bench-refine-"))
    if args.sdxl_unet:
        model, (seq, width, pooled) = _random_sdxl(work / "sdxl"), (77, 2048, 1280)
        label = "SDXL UNet architecture, random weights"
    else:
        from luna_core.models.profiles import tiny_profile
        from luna_core.models.tiny import ensure_tiny_models

        model, (seq, width, pooled) = tiny_profile(ensure_tiny_models(work / "tiny")).sdxl_model, (77, 96, 48)
        label = "tiny profile (random weights)"
    sampler = SDXLSampler(model, None, device, dtype)
    settings = SamplerSettings(strength=args.strength, steps=args.steps, guidance_scale=5.0, seed=0, batch_size=64)
    native = sampler.native_size
    side = args.image or native * 4
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    print(f"{label}; device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}, "
          f"{args.steps} steps at strength {args.strength}, median of {args.repeat}")

    boxes = [Rect(int(x), int(y), side // 8, side // 8) for x in np.linspace(0, side * 7 // 8, 3)
             for y in np.linspace(0, side * 7 // 8, 3)]
    crops = detail_crops(side, side, boxes)
    from PIL import Image

    crop_images = [np.asarray(Image.fromarray(picture[c.rect.y : c.rect.y + c.rect.height,
                                                      c.rect.x : c.rect.x + c.rect.width]).resize((native, native)))
                   for c in crops]
    detail = measure(sampler, crop_images, [c.rect for c in crops], (side, side), (native, native), settings,
                     args.repeat, 0, seq, width, pooled)

    tiles = chess_tiles(side, side, 5, multiple=sampler.pixel_multiple)
    chess = {"items": 0, "batched_s": 0.0, "one_call_per_item_s": 0.0, "max_item_diff": 0.0}
    for parity in (0, 1):
        cells = [t for t in tiles if t.parity == parity]
        images = [picture[t.rect.y : t.rect.y + t.rect.height, t.rect.x : t.rect.x + t.rect.width] for t in cells]
        one = measure(sampler, images, [t.rect for t in cells], (side, side), (cells[0].rect.height, cells[0].rect.width),
                      settings, args.repeat, parity, seq, width, pooled)
        chess = {k: chess[k] + one[k] if k != "max_item_diff" else max(chess[k], one[k]) for k in chess}
    figures = {"label": label, "device": str(device), "tile": tiles[0].rect.width, "crop": native}
    for name, row in (("detailer, 9 crops", detail), ("chess 5x5, 25 tiles in 2 passes", chess)):
        speedup = row["one_call_per_item_s"] / row["batched_s"]
        figures[name] = {**row, "speedup": speedup}
        print(f"{name:34s} batched {row['batched_s']:7.3f}s   one call per item {row['one_call_per_item_s']:7.3f}s   "
              f"speedup {speedup:5.2f}x   max item difference {row['max_item_diff']:.2e}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def _random_sdxl(dest: Path) -> str:
    """The SDXL base UNet and VAE architectures (diffusers' default SDXL configs) with random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=128, cross_attention_dim=2048, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
    ).save_pretrained(dest / "unet")
    AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, latent_channels=4, sample_size=1024,
                  scaling_factor=0.13025).save_pretrained(dest / "vae")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading").save_pretrained(dest / "scheduler")
    (dest / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionXLImg2ImgPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None], "text_encoder_2": [None, None], "tokenizer": [None, None],
        "tokenizer_2": [None, None], "image_encoder": [None, None], "feature_extractor": [None, None],
        "requires_aesthetics_score": False, "force_zeros_for_empty_prompt": True}))
    return str(dest)


if __name__ == "__main__":
    sys.exit(main())
