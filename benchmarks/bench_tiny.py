"""What the trained tiny world learned, every figure with its 95 % interval, on held-out pictures
(the sample generator at a seed the training never used).

    .venv/bin/python benchmarks/bench_tiny.py                 # the cached world: CLIP pair, VAE,
    UNet .venv/bin/python benchmarks/bench_tiny.py --train         # also time a training from
    scratch (a temp cache) .venv/bin/python benchmarks/bench_tiny.py --demo          # also build
    a fresh demo and check its report's ordering

A check of the method on generated shapes: none of these is a CLIP or SDXL figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from luna_core.models.tiny_world import RECIPE
from luna_core.samples.pictures import (
    BACKGROUNDS,
    COLOURS,
    SUBJECTS,
    PromptSpec,
    draw_picture,
    random_prompt,
)

HELD_OUT_SEED = RECIPE["seed"] + 1000  # training uses seed + 1 .. seed + 6


def wilson(hits: int, n: int) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p, z = hits / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def mean_interval(values) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    half = 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def held_out(count: int, size: int) -> tuple[list[PromptSpec], list[Image.Image]]:
    rng = random.Random(HELD_OUT_SEED + size)
    specs = [random_prompt(rng) for _ in range(count)]
    return specs, [draw_picture(spec, rng.randrange(2**31), (size, size)) for spec in specs]


def with_change(spec: PromptSpec, **changes) -> str:
    return PromptSpec(**{**spec.__dict__, **changes}).prompt


class World:
    def __init__(self, root: Path):
        import torch

        from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
        from luna_core.models.profiles import tiny_profile

        self.profile = tiny_profile(root)
        cpu = torch.device("cpu")
        self.vision = VisionEncoder(self.profile.vision_model, None, cpu, torch.float32)
        self.text = SDXLTextEncoder(self.profile.sdxl_model, None, cpu, torch.float32)

    def images(self, pictures) -> np.ndarray:
        return self.vision.embed_pixels(np.stack([self.vision.preprocess(p) for p in pictures]))

    def texts(self, prompts: list[str]) -> np.ndarray:
        pooled = self.text.encode(prompts)[1]
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def bench_clip(world: World, count: int, size: int) -> None:
    specs, pictures = held_out(count, size)
    images = world.images(pictures)
    print(
        f"\nCLIP pair, zero-shot on {count} held-out pictures at {size} px (the true prompt with "
        "one part changed):"
    )
    for attribute, values in (
        ("colour", list(COLOURS)),
        ("background", list(BACKGROUNDS)),
        ("subject", list(SUBJECTS)),
    ):
        hits = 0
        for spec, image in zip(specs, images):
            candidates = world.texts([with_change(spec, **{attribute: v}) for v in values])
            hits += values[int(np.argmax(candidates @ image))] == getattr(spec, attribute)
        low, high = wilson(hits, count)
        print(
            f"  {attribute:<11} {hits / count:6.1%}  [{low:.1%}, {high:.1%}]  (chance "
            f"{1 / len(values):.0%})"
        )
    pairs = min(100, count)
    similarity = world.texts([s.prompt for s in specs[:pairs]]) @ images[:pairs].T  # text -> image
    ranks = (similarity > np.diag(similarity)[:, None]).sum(axis=1)
    for k in (1, 5):
        hits = int((ranks < k).sum())
        low, high = wilson(hits, pairs)
        print(
            f"  text->image R@{k} over {pairs} pairs: {hits / pairs:.1%}  [{low:.1%}, {high:.1%}]"
            + ("  (prompts differing only in style tags look alike by design)" if k == 1 else "")
        )


def bench_vae(root: Path, count: int) -> None:
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(root / "sdxl" / "vae").eval()
    print(f"\nVAE reconstruction PSNR on {count} held-out pictures (latent mean, decoded):")
    for size in (256, 96, 64):
        _, pictures = held_out(count, size)
        x = (
            torch.from_numpy(np.stack([np.asarray(p) for p in pictures]))
            .permute(0, 3, 1, 2)
            .float()
            / 127.5
            - 1
        )
        with torch.no_grad():
            out = torch.cat(
                [
                    vae.decode(vae.encode(x[i : i + 16]).latent_dist.mean).sample.clamp(-1, 1)
                    for i in range(0, len(x), 16)
                ]
            )
        mse = ((out - x) ** 2).flatten(1).mean(1).numpy()
        mean, low, high = mean_interval(10 * np.log10(4 / mse))
        print(
            f"  at {size:>3} px: {mean:.2f} dB  [{low:.2f}, {high:.2f}]"
            + ("  (the demo's size)" if size == 256 else "")
        )


def bench_unet(world: World, count: int, strength: float, steps: int) -> None:
    import torch

    from luna_core.refine.options import SamplerSettings
    from luna_core.refine.sampler import ItemConditioning, SDXLSampler

    sampler = SDXLSampler(world.profile.sdxl_model, None, torch.device("cpu"), torch.float32)
    side = sampler.native_size
    specs, pictures = held_out(count, side)
    cols = list(COLOURS)
    prompts = {
        "true": [s.prompt for s in specs],
        "empty": [""] * count,
        "other colour": [
            with_change(s, colour=cols[(cols.index(s.colour) + 5) % len(cols)]) for s in specs
        ],
    }
    original = world.images(pictures)
    settings = SamplerSettings(strength=strength, steps=steps, batch_size=64)
    time_ids = np.array([[side, side, 0, 0, side, side]] * count, np.float32)
    seeds = list(range(count))
    scores = {}
    for name, texts in prompts.items():
        hidden, pooled = world.text.encode(texts)
        conditions = [
            ItemConditioning(
                hidden[i], pooled[i], np.zeros_like(hidden[i]), np.zeros_like(pooled[i])
            )
            for i in range(count)
        ]
        out = sampler.refine(pictures, conditions, time_ids, seeds, settings)
        regenerated = [
            Image.fromarray(np.clip((o + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)) for o in out
        ]
        scores[name] = np.sum(world.images(regenerated) * original, axis=1)
    print(
        f"\nUNet: {count} held-out {side} px pictures regenerated at strength {strength} "
        f"({steps} steps, "
        f"guidance {settings.guidance_scale}); CLIP-I to the original (tiny CLIP), paired "
        "differences:"
    )
    for name, values in scores.items():
        mean, low, high = mean_interval(values)
        print(f"  {name:<13} CLIP-I {mean:.4f}  [{low:.4f}, {high:.4f}]")
    for other in ("empty", "other colour"):
        mean, low, high = mean_interval(scores["true"] - scores[other])
        verdict = "excludes 0" if low > 0 or high < 0 else "DOES NOT exclude 0"
        print(f"  true - {other:<13} {mean:+.4f}  [{low:+.4f}, {high:+.4f}]  {verdict}")


def bench_training() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "LUNA_TINY_CACHE": cache}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "luna_cli.main", "tiny-world", "--quiet"], env=env, check=True
        )
        wall = time.perf_counter() - started
        built = json.loads(next(Path(cache).glob("*/complete.json")).read_text())
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in built["seconds"].items())
    print(
        f"\nTraining from scratch: {wall:.0f} s wall ({parts}; {built['threads']} threads; goal "
        "<= 480 s)"
    )


def bench_demo() -> None:
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "luna_cli.main", "demo", "--home", home],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(
            f"\nDemo build (models cached): {time.perf_counter() - started:.1f} s wall (goal <= "
            "60 s)"
        )
        report = json.loads(
            (
                Path(home)
                / "reports"
                / json.loads((Path(home) / "reports" / "latest.json").read_text())["folder"]
                / "report.json"
            ).read_text()
        )
    from luna_core.reports.ordering import ordering_lines

    for line in ordering_lines(report):
        print("  " + line)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pictures", type=int, default=300, help="held-out pictures for the CLIP pair and the VAE"
    )
    parser.add_argument("--unet-pictures", type=int, default=100)
    parser.add_argument("--strength", type=float, default=0.6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--train", action="store_true", help="time a training from scratch in a temporary cache"
    )
    parser.add_argument(
        "--demo", action="store_true", help="build a fresh demo and check its report's ordering"
    )
    args = parser.parse_args()

    import torch

    from luna_core.models.tiny import ensure_tiny_models

    root = ensure_tiny_models()
    built = json.loads((root / "complete.json").read_text())
    print(
        f"Tiny world {built['recipe_hash']} at {root}: trained in "
        f"{sum(built['seconds'].values()):.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in built['seconds'].items())}); "
        f"{torch.get_num_threads()} threads"
    )
    world = World(root)
    bench_clip(world, args.pictures, 256)
    bench_vae(root, args.pictures)
    bench_unet(world, args.unet_pictures, args.strength, args.steps)
    if args.train:
        bench_training()
    if args.demo:
        bench_demo()
    return 0


if __name__ == "__main__":
    sys.exit(main())
