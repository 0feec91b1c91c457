"""What true batching saves: the same items, seeds and conditionings refined in one sampler call and
in one call per item, side by side (used by benchmarks/bench_refine.py and the refinement
report)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from PIL import Image

from luna_core.ask.boxes import Box
from luna_core.metadata.record import Lora
from luna_core.refine.geometry import chess_tiles, detail_crops
from luna_core.refine.memory import peak_memory
from luna_core.refine.options import SamplerSettings
from luna_core.refine.sampler import ItemConditioning, SDXLSampler, item_seed


def random_conditions(
    n: int, seq: int, width: int, pooled: int, seed: int
) -> list[ItemConditioning]:
    rng = np.random.default_rng(seed)
    return [
        ItemConditioning(
            rng.normal(size=(seq, width)).astype(np.float32),
            rng.normal(size=pooled).astype(np.float32),
            np.zeros((seq, width), np.float32),
            np.zeros(pooled, np.float32),
        )
        for _ in range(n)
    ]


def measure(
    sampler: SDXLSampler,
    images: list,
    places: list[Box],
    original: tuple[int, int],
    target: tuple[int, int],
    conditions: list[ItemConditioning],
    settings: SamplerSettings,
    repeat: int = 3,
    pass_index: int = 0,
) -> dict:
    """Median wall time of one batched call and of one call per item, and the largest difference
    between an item's two results (decoded pixels in [-1, 1], before rounding)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    time_ids = np.array([[*original, r.y, r.x, *target] for r in places], np.float32)
    seeds = [item_seed(settings.seed, pass_index, i) for i in range(len(images))]
    batched_times, single_times = [], []
    for _ in range(repeat):  # alternate, so both see the same machine state
        started = time.perf_counter()
        batched = sampler.refine(images, conditions, time_ids, seeds, settings)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        batched_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        single = [
            sampler.refine([images[i]], [conditions[i]], time_ids[i : i + 1], [seeds[i]], settings)[
                0
            ]
            for i in range(len(images))
        ]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        single_times.append(time.perf_counter() - started)
    diff = max(float(np.max(np.abs(b - s))) for b, s in zip(batched, single))
    batched_s, single_s = float(np.median(batched_times)), float(np.median(single_times))
    return {
        "items": len(images),
        "batched_s": batched_s,
        "one_call_per_item_s": single_s,
        "speedup": single_s / batched_s if batched_s else 0.0,
        "max_item_diff": diff,
    }


def batching_table(
    sampler: SDXLSampler,
    picture: np.ndarray,
    settings: SamplerSettings,
    repeat: int = 3,
    widths: tuple[int, int, int] = (77, 2048, 1280),
) -> dict[str, dict]:
    """Batched vs one call per item for 9 detailer crops and a 5 x 5 chess grid (two passes) on
    `picture`."""

    seq, width, pooled = widths
    side = min(picture.shape[:2])
    native = sampler.native_size
    boxes = [
        Box(int(x), int(y), side // 8, side // 8)
        for x in np.linspace(0, side * 7 // 8, 3)
        for y in np.linspace(0, side * 7 // 8, 3)
    ]
    crops = detail_crops(side, side, boxes)
    crop_images = [
        np.asarray(
            Image.fromarray(
                picture[c.rect.y : c.rect.y + c.rect.height, c.rect.x : c.rect.x + c.rect.width]
            ).resize((native, native))
        )
        for c in crops
    ]
    detail = measure(
        sampler,
        crop_images,
        [c.rect for c in crops],
        (side, side),
        (native, native),
        random_conditions(len(crops), seq, width, pooled, 0),
        settings,
        repeat,
    )
    tiles = chess_tiles(side, side, 5, multiple=sampler.pixel_multiple)
    passes = []
    for parity in (0, 1):
        cells = [t for t in tiles if t.parity == parity]
        images = [
            picture[t.rect.y : t.rect.y + t.rect.height, t.rect.x : t.rect.x + t.rect.width]
            for t in cells
        ]
        passes.append(
            measure(
                sampler,
                images,
                [t.rect for t in cells],
                (side, side),
                (cells[0].rect.height, cells[0].rect.width),
                random_conditions(len(cells), seq, width, pooled, parity + 1),
                settings,
                repeat,
                parity,
            )
        )
    chess = {
        "items": sum(p["items"] for p in passes),
        "batched_s": sum(p["batched_s"] for p in passes),
        "one_call_per_item_s": sum(p["one_call_per_item_s"] for p in passes),
        "max_item_diff": max(p["max_item_diff"] for p in passes),
    }
    chess["speedup"] = (
        chess["one_call_per_item_s"] / chess["batched_s"] if chess["batched_s"] else 0.0
    )
    return {
        "detailer, 9 crops": detail,
        "chess 5x5, 25 tiles in 2 passes": chess,
        "tile": tiles[0].rect.width,
        "crop": native,
    }


def refiner_batching(
    refiner, image, boxes: list[Box], settings, repeat: int = 1
) -> dict[str, dict]:
    """Whole refiner calls on one image, as `luna refine` makes them: batched (one sampler call per
    pass) and sequential (one call per item), for the chess refiner and the detailer. Wall time
    of each, and how far the two saved images differ (0-255 levels; the share of pixel values
    that differ at all)."""
    rows = {}
    runs = (
        (f"chess {settings.grid}x{settings.grid}", lambda s: refiner.chess(image, s)),
        (f"detailer, {len(boxes)} boxes", lambda s: refiner.detail(image, boxes, s)),
    )
    for name, run in runs:
        timings: dict[bool, list[float]] = {False: [], True: []}
        results = {}
        for _ in range(repeat):  # alternate, so both see the same machine state
            for sequential in (False, True):
                started = time.perf_counter()
                results[sequential], report = run(replace(settings, sequential=sequential))
                timings[sequential].append(time.perf_counter() - started)
        batched = np.asarray(results[False], dtype=np.int16)
        diff = np.abs(batched - np.asarray(results[True], dtype=np.int16))
        batched_s, sequential_s = float(np.median(timings[False])), float(np.median(timings[True]))
        rows[name] = {
            "items": sum(p.items for p in report.passes),
            "batched_s": batched_s,
            "sequential_s": sequential_s,
            "speedup": sequential_s / batched_s if batched_s else 0.0,
            "max_pixel_diff": int(diff.max()),
            "pixels_differing": float((diff > 0).mean()),
        }
    return rows


def lora_batching(
    sampler: SDXLSampler,
    crops: list,
    loras: list[tuple[str, float]],
    files: dict[str, str],
    settings: SamplerSettings,
    repeat: int = 3,
    widths: tuple[int, int, int] = (77, 2048, 1280),
) -> dict:
    """Per-item LoRAs, crop i with loras[i] (a name of `files` and a weight), three ways on the same
    crops, seeds and conditionings:
    - batched: one sampler call, each row its own LoRA (luna_core.refine.lora);
    - sequential: per crop, diffusers' `load_lora_weights` + `fuse_lora`, one call, then unfuse
      and unload (what a diffusers user does; needs peft);
    - fused, one LoRA: every crop with the first LoRA fused into the UNet, one call; against
      the same crops batched with that LoRA per row: the cost of per-row updates over fused
      weights.
    Median wall times and the largest difference between the batched and sequential results."""
    seq, width, pooled = widths
    conditions = random_conditions(len(crops), seq, width, pooled, 3)
    side = crops[0].shape[0]
    time_ids = np.array([[side * 3, side * 3, 0, 0, side, side]] * len(crops), np.float32)
    seeds = [item_seed(settings.seed, 0, i) for i in range(len(crops))]
    sampler.load_loras({name: path for name, path in files.items()})
    sets = [((Lora(name, weight),)) for name, weight in loras]
    one = [((Lora(loras[0][0], loras[0][1]),))] * len(crops)
    timings: dict[str, list[float]] = {
        "batched": [],
        "sequential": [],
        "per-row, one LoRA": [],
        "fused, one LoRA": [],
    }
    results: dict[str, list] = {}
    pipe = sampler.pipe

    def fused(name: str, weight: float):
        pipe.load_lora_weights(files[name], adapter_name="bench")
        pipe.set_adapters(["bench"], [weight])
        pipe.fuse_lora(adapter_names=["bench"])

    def unfused():
        pipe.unfuse_lora()
        pipe.unload_lora_weights()

    for _ in range(repeat):  # alternate, so all see the same machine state
        started = time.perf_counter()
        results["batched"] = sampler.refine(
            crops, conditions, time_ids, seeds, settings, loras=sets
        )
        timings["batched"].append(time.perf_counter() - started)
        started = time.perf_counter()
        out = []
        for i, (name, weight) in enumerate(loras):
            fused(name, weight)
            out += sampler.refine(
                crops[i : i + 1],
                conditions[i : i + 1],
                time_ids[i : i + 1],
                seeds[i : i + 1],
                settings,
            )
            unfused()
        results["sequential"] = out
        timings["sequential"].append(time.perf_counter() - started)
        started = time.perf_counter()
        sampler.refine(crops, conditions, time_ids, seeds, settings, loras=one)
        timings["per-row, one LoRA"].append(time.perf_counter() - started)
        fused(*loras[0])
        started = time.perf_counter()
        sampler.refine(crops, conditions, time_ids, seeds, settings)
        timings["fused, one LoRA"].append(time.perf_counter() - started)
        unfused()
    medians = {name: float(np.median(t)) for name, t in timings.items()}
    diff = max(
        float(np.max(np.abs(b - s))) for b, s in zip(results["batched"], results["sequential"])
    )
    return {
        "items": len(crops),
        "loras": len(files),
        "seconds": medians,
        "speedup": medians["sequential"] / medians["batched"],
        "per_row_overhead": medians["per-row, one LoRA"] / medians["fused, one LoRA"] - 1.0,
        "max_item_diff": diff,
    }


def budget_pass(
    sampler: SDXLSampler,
    side: int,
    grid: int,
    budgets_mb: list[float],
    settings: SamplerSettings,
    widths: tuple[int, int, int] = (77, 2048, 1280),
) -> list[dict]:
    """The even pass of a grid x grid chess refinement of a side x side picture, once per memory
    budget (0: the automatic one): how the budget split it, the peak memory measured, and the
    wall time."""
    seq, width, pooled = widths
    tiles = [
        t for t in chess_tiles(side, side, grid, multiple=sampler.pixel_multiple) if t.parity == 0
    ]
    rng = np.random.default_rng(0)
    h, w = tiles[0].rect.height, tiles[0].rect.width
    crops = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in tiles]
    conditions = random_conditions(len(tiles), seq, width, pooled, 4)
    time_ids = np.array([[side, side, t.rect.y, t.rect.x, h, w] for t in tiles], np.float32)
    seeds = [item_seed(settings.seed, 0, t.index) for t in tiles]
    rows = []
    for budget in budgets_mb:
        chosen = replace(settings, memory_budget_mb=budget)
        plan = sampler.plan(len(crops), h, w, chosen)
        started = time.perf_counter()
        with peak_memory(sampler.device) as peak:
            sampler.refine(crops, conditions, time_ids, seeds, chosen)
        rows.append(
            {
                "budget_mb": plan.budget_mb,
                "tiles": len(crops),
                "tile": f"{w}x{h}",
                "plan": plan.describe(),
                "vae_chunks": plan.vae_chunks,
                "unet_chunks": plan.unet_chunks,
                "peak_mb": peak["peak_mb"],
                "measured_as": peak["measured_as"],
                "seconds": time.perf_counter() - started,
            }
        )
    return rows
