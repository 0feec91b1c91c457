"""Luna's GPU suite: every GPU figure the docs ask for, in one prepared run (scripts/gpu-suite).

On a lent CUDA machine it builds RANDOM-weight models at SDXL's real sizes (ViT-H/14, CLIP-L +
bigG, UNet, VAE; speeds and memory only, no quality figure) and measures:

- P1, the embedding path (files read, checked, decoded and preprocessed in Luna's worker threads,
  then the vision tower) against a bare forward pass on ready tensors: throughput and efficiency;
- the text encoders' throughput (prompt chunks per second);
- the chess (5 x 5 grid) and detailer (9 crops) batching speedups at 1024 px items, SDXL's UNet;
- the per-item LoRA overhead (per-row LoRAs in one call against one fused LoRA);
- the peak GPU memory of a 4096² chess pass at a memory budget and at the automatic one.

It writes gpu-suite.json and gpu-suite.md into --out. `--dry-run` runs the same code on the CPU with
the tiny world's models and a few items, so CI keeps it working; its figures measure nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
from luna_core.refine.batching import batching_table, budget_pass, lora_batching
from luna_core.refine.options import SamplerSettings
from luna_core.refine.sampler import SDXLSampler
from luna_core.samples import make_sample_library
from luna_core.samples.loras import write_sample_lora
from luna_core.vault.decode import load_image, prefetch


def models(dry_run: bool, cache: Path | None) -> tuple[str, str, tuple[int, int, int], str]:
    """(vision model, SDXL model, conditioning widths, label)."""
    if dry_run:
        from luna_core.models.tiny import ensure_tiny_models

        root = ensure_tiny_models(progress=False)
        label = "tiny world on the CPU (a dry run: these figures measure nothing)"
        return str(root / "vision"), str(root / "sdxl"), (77, 96, 48), label
    sys.path.insert(0, str(Path(__file__).parent))
    from fullsize_models import ensure_fullsize_models

    files = ensure_fullsize_models(cache, single_files=False)
    label = "random weights at real sizes (ViT-H/14, CLIP-L + bigG, SDXL UNet and VAE)"
    return str(files.vision_folder), str(files.sdxl_folder), (77, 2048, 1280), label


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def embedding_figures(vision_model: str, device, dtype, work: Path, images: int) -> dict:
    """The vault's read-decode-preprocess-forward path against the bare forward, same batches."""
    import hashlib

    library = make_sample_library(work / "library", images, seed=3, size=(768, 768), broken=False)
    paths = sorted(
        str(p)
        for p in Path(library.root).rglob("*")
        if p.suffix in (".png", ".jpg", ".jpeg", ".webp")
    )
    items = [(hashlib.sha256(Path(p).read_bytes()).hexdigest(), p) for p in paths][:images]
    encoder = VisionEncoder(vision_model, None, device, dtype)
    batch = 64 if device.type == "cuda" else 8
    ready = np.stack([load_image(items[0], encoder.preprocess).pixels] * batch)
    encoder.embed_pixels(ready)  # warm-up: kernels chosen, memory taken
    synchronize(device)
    started = time.perf_counter()
    for _ in range(max(1, len(items) // batch)):
        encoder.embed_pixels(ready)
    synchronize(device)
    bare = max(1, len(items) // batch) * batch / (time.perf_counter() - started)
    workers = min(8, os.cpu_count() or 1)
    started, done, pending = time.perf_counter(), 0, []
    for loaded in prefetch(items, lambda i: load_image(i, encoder.preprocess), workers, batch * 3):
        pending.append(loaded.pixels)
        if len(pending) == batch:
            encoder.embed_pixels(np.stack(pending))
            done, pending = done + batch, []
    if pending:
        encoder.embed_pixels(np.stack(pending))
        done += len(pending)
    synchronize(device)
    path = done / (time.perf_counter() - started)
    return {
        "images": done,
        "batch": batch,
        "decode_workers": workers,
        "path_images_per_s": round(path, 1),
        "bare_images_per_s": round(bare, 1),
        "efficiency": round(path / bare, 3),
    }


def text_figures(sdxl_model: str, device, dtype, chunks: int) -> dict:
    encoder = SDXLTextEncoder(sdxl_model, None, device, dtype)
    batch = 64 if device.type == "cuda" else 8
    prompts = [f"a photo of a red fox number {i}, snow, golden hour" for i in range(batch)]
    ids = np.asarray(
        encoder.tokenizer(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    )
    ids_2 = np.asarray(
        encoder.tokenizer_2(prompts, padding="max_length", max_length=77, truncation=True).input_ids
    )
    encoder.encode_ids(ids, ids_2)
    synchronize(device)
    started, done = time.perf_counter(), 0
    while done < chunks:
        encoder.encode_ids(ids, ids_2)
        done += batch
    synchronize(device)
    return {
        "chunks": done,
        "batch": batch,
        "chunks_per_s": round(done / (time.perf_counter() - started), 1),
    }


def refine_figures(sdxl_model: str, device, dtype, widths, args, work: Path) -> dict:
    sampler = SDXLSampler(sdxl_model, None, device, dtype)
    settings = SamplerSettings(
        strength=0.5, steps=args.steps, guidance_scale=5.0, seed=0, batch_size=64
    )
    native = sampler.native_size
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (native * 4, native * 4, 3), dtype=np.uint8)
    figures = {"native_item": native}
    table = batching_table(sampler, picture, settings, args.repeat, widths)
    figures["batching"] = table
    side = native
    crops = [picture[:side, :side]] * 9
    files = {
        f"lora{i}": str(write_sample_lora(work / f"lora{i}.safetensors", sampler.unet, i, layout))
        for i, layout in enumerate(("kohya", "kohya-sgm", "peft"))
    }
    loras = [(f"lora{i % 3}", 0.5 + 0.25 * (i % 3)) for i in range(len(crops))]
    figures["lora"] = lora_batching(sampler, crops, loras, files, settings, args.repeat, widths)
    figures["memory"] = budget_pass(
        sampler,
        native * 4,
        5,
        [args.budget_mb, 0.0],
        replace(settings, batch_size=0, steps=2),
        widths,
    )
    return figures


def markdown(figures: dict) -> str:
    e, t, r = figures["embedding"], figures["text"], figures.get("refine", {})
    lines = [
        f"GPU suite: {figures['label']}; {figures['device_name']}, {figures['dtype']}, torch "
        f"{figures['torch']}",
        "",
        "| figure | value |",
        "|---|---|",
        "| P1 embedding path (read, check, decode, preprocess, forward) | "
        f"{e['path_images_per_s']} img/s |",
        f"| P1 bare forward, same batches ({e['batch']}) | {e['bare_images_per_s']} img/s |",
        f"| P1 efficiency (goal >= 0.9) | {e['efficiency']} |",
        f"| text encoders, CLIP-L + bigG | {t['chunks_per_s']} chunks of 77 tokens/s |",
    ]
    for name, row in r.get("batching", {}).items():
        if isinstance(row, dict) and "speedup" in row:
            lines.append(
                f"| {name}: batched vs one call per item | {row['speedup']:.2f}x "
                f"({row['batched_s']:.2f}s vs {row['one_call_per_item_s']:.2f}s) |"
            )
    if "lora" in r:
        lora = r["lora"]
        lines.append(
            f"| per-item LoRAs in one call vs load+fuse per item | {lora['speedup']:.2f}x |"
        )
        lines.append(
            "| per-row LoRA overhead over one fused LoRA | "
            f"{100 * lora['per_row_overhead']:+.1f} % |"
        )
    for row in r.get("memory", []):
        lines.append(
            f"| chess 5x5 even pass, budget {row['budget_mb']:,.0f} MB | "
            f"peak {row['peak_mb']:,.0f} MB ({row['measured_as']}), {row['seconds']:.1f}s |"
        )
    lines.append(f"| suite wall time | {figures['seconds']:.0f}s |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny world, few items (CI)")
    parser.add_argument("--out", type=Path, default=Path("gpu-suite-out"))
    parser.add_argument("--cache", type=Path, help="where the random full-size models are kept")
    parser.add_argument("--images", type=int, default=0, help="P1 images (default 512; dry 16)")
    parser.add_argument("--steps", type=int, default=0, help="sampler steps (default 4; dry 1)")
    parser.add_argument("--repeat", type=int, default=0, help="timings' repeats (default 2; dry 1)")
    parser.add_argument("--budget-mb", type=float, default=8192.0)
    parser.add_argument("--skip-refine", action="store_true")
    args = parser.parse_args()
    dry = args.dry_run
    args.images = args.images or (16 if dry else 512)
    args.steps = args.steps or (1 if dry else 4)
    args.repeat = args.repeat or (1 if dry else 2)
    if dry:
        args.budget_mb = min(args.budget_mb, 64.0)
    if not dry and not torch.cuda.is_available():
        print("no CUDA device here: run with --dry-run, or on a lent GPU machine", file=sys.stderr)
        return 2
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # per-LoRA "no text encoder keys" notes: not figures
    device = torch.device("cpu" if dry else "cuda")
    dtype = torch.float32 if dry else torch.bfloat16
    started = time.perf_counter()
    vision, sdxl, widths, label = models(dry, args.cache)
    work = Path(tempfile.mkdtemp(prefix="luna-gpu-suite-"))
    figures = {
        "label": label,
        "device_name": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else platform.processor() or "CPU",
        "dtype": str(dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "embedding": embedding_figures(vision, device, dtype, work, args.images),
        "text": text_figures(sdxl, device, dtype, args.images),
    }
    if not args.skip_refine:
        figures["refine"] = refine_figures(sdxl, device, dtype, widths, args, work)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-suite.json").write_text(json.dumps(figures, indent=1, default=str))
    table = markdown(figures)
    (args.out / "gpu-suite.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
