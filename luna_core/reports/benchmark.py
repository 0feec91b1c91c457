"""The report's expensive part, run on a schedule or on demand, never in the path of the data: a
regeneration sample through the chess refiner with each source, the sources' costs, and what true
batching saves. Reports reuse the latest result and say how old it is.

    HOME/reports/benchmarks/
        latest.json                 {"folder": "20261206-050000"}
        20261206-050000/            benchmark.json, contact_sheet.png
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from luna_core.ask.boxes import Box
from luna_core.ask.vault_query import VaultQuery
from luna_core.errors import LunaError
from luna_core.files import write_atomically
from luna_core.home.home import LunaHome
from luna_core.images import read_picture
from luna_core.models.profiles import ModelProfile
from luna_core.refine.batching import refiner_batching
from luna_core.refine.conditioning import Conditioner
from luna_core.refine.options import RefineSettings, SamplerSettings, SourceSettings
from luna_core.refine.refiner import Refiner
from luna_core.refine.sampler import ItemConditioning
from luna_core.reports.evaluate import EvalSettings, leave_out, mean_of_train, registered_projectors
from luna_core.reports.frozen_set import TestSet, load_test_set
from luna_core.reports.quality import QualitySettings, refine_sample
from luna_core.vault.segments import open_text_store, open_vision_store, store_bytes

log = logging.getLogger(__name__)

BENCHMARK_CODE_VERSION = "2"  # 2: batching as whole refiner calls; CLIP-T where comparable


@dataclass(frozen=True)
class BenchmarkSettings:
    evaluation: EvalSettings = EvalSettings()  # k, temperature, projector name, test-set size
    quality: QualitySettings = QualitySettings()
    batching_repeat: int = 3
    batching_steps: int = 8
    latency_repeat: int = 20  # timed repeats per cost figure; the median is reported


@dataclass
class BenchmarkOutcome:
    folder: Path
    result: dict = field(default_factory=dict)


def state_dict_bytes(model) -> int:
    """Bytes of every tensor a checkpoint of `model` holds, buffers included."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def machine_load() -> dict:
    """What else the machine was doing: load averages beside the core count (costs move with
    load)."""
    one, five, _ = os.getloadavg()
    return {"load_1min": round(one, 2), "load_5min": round(five, 2), "cores": os.cpu_count() or 1}


def latest_benchmark(home: LunaHome) -> tuple[Path, dict] | None:
    root = home.reports_dir / "benchmarks"
    try:
        folder = root / json.loads((root / "latest.json").read_text())["folder"]
        return folder, json.loads((folder / "benchmark.json").read_text())
    except (OSError, ValueError, KeyError):
        return None


def run_benchmark(
    home: LunaHome,
    profile: ModelProfile,
    settings: BenchmarkSettings = BenchmarkSettings(),
    device: str = "auto",
    on_step=None,
) -> BenchmarkOutcome:
    """Refine a sample of the frozen test set with every source, time the sources and the batching,
    and write the result beside the earlier ones (the pointer moves last)."""

    step = on_step or (lambda message: log.info(message))
    started, load_before = time.perf_counter(), machine_load()
    vault = VaultQuery(home, profile, device)
    test_set = load_test_set(home, settings.evaluation.max_images, settings.evaluation.seed)
    projectors = registered_projectors(home, vault, settings.evaluation)
    step("refining a sample of test images with each source")
    quality, sheet, refiner, picture = _quality(
        home, profile, vault, test_set, projectors, settings, device
    )
    step("measuring costs and what batching saves")
    costs = _costs(home, vault, projectors, test_set, refiner, picture, settings)
    result = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "code_version": BENCHMARK_CODE_VERSION,
        "profile": profile.name,
        "index_version": vault.index.version.number,
        "test_series": test_set.frozen.series,
        "projectors": [p.label for p in projectors],
        "settings": asdict(settings),
        "quality": quality,
        "costs": costs,
        "load": {"before": load_before, "after": machine_load()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    return BenchmarkOutcome(_write(home, result, sheet), result)


def _write(home: LunaHome, result: dict, sheet) -> Path:
    root = home.reports_dir / "benchmarks"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        if sheet is not None:
            sheet.save(staging / "contact_sheet.png")
        (staging / "benchmark.json").write_text(json.dumps(result, indent=2, default=str))
        name = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder, suffix = root / name, 1
        while folder.exists():
            folder, suffix = root / f"{name}-{suffix}", suffix + 1
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_atomically(
        root / "latest.json", lambda tmp: tmp.write_text(json.dumps({"folder": folder.name}))
    )
    return folder


def _quality(
    home: LunaHome,
    profile: ModelProfile,
    vault,
    test_set: TestSet,
    projectors,
    settings: BenchmarkSettings,
    device,
):

    pairs = test_set.pairs
    refiner = Refiner(
        home, profile, SourceSettings("vault", k=settings.evaluation.k), device=device
    )
    count = min(settings.quality.images, len(pairs.image_ids))
    if count == 0:
        return {}, None, refiner, None
    chosen = np.sort(
        np.random.default_rng(settings.quality.seed).choice(
            len(pairs.image_ids), count, replace=False
        )
    )
    images, kept = [], []
    for position in chosen:
        try:
            images.append(read_picture(test_set.paths[position]))
            kept.append(int(position))
        except (
            LunaError
        ) as exc:  # a file gone since the catalog was built: the sample shrinks, says so
            log.warning("benchmark sample image left out: %s", exc)
    text = open_text_store(home, profile)
    true_rows = pairs.prompt_rows[kept]
    empty_tokens, empty_pooled = vault.encode_prompt("")
    zeros = (
        np.zeros(text.fields["prompt_embeds"], np.float32),
        np.zeros(text.fields["pooled_prompt_embeds"], np.float32),
    )
    tokens = text.read_rows("prompt_embeds", true_rows).astype(np.float32)
    pooled = text.read_rows("pooled_prompt_embeds", true_rows).astype(np.float32)
    mean_item = ItemConditioning(*mean_of_train(home, profile), *zeros)
    whole = {
        "true prompt": [ItemConditioning(t, p, *zeros) for t, p in zip(tokens, pooled)],
        "mean": [mean_item] * len(images),
        "empty": [ItemConditioning(empty_tokens, empty_pooled, *zeros)] * len(images),
    }
    per_tile = {"vault": refiner.conditioner}
    champion = next((p.model for p in projectors if p.champion), None)
    if champion is not None:
        per_tile["projector"] = Conditioner(
            vault, SourceSettings("projector"), projector=(champion, None)
        )
    result = refine_sample(
        refiner,
        images,
        [leave_out(test_set, int(pairs.image_ids[i])) for i in kept],
        whole,
        per_tile,
        settings.quality,
        shared_space=profile.shared_space,
    )
    return (
        {
            "clip_i": result.clip_i,
            "sample_paths": [test_set.paths[i] for i in kept],
            "clip_t": result.clip_t,
            "settings": asdict(settings.quality),
        },
        result.sheet,
        refiner,
        images[0] if images else None,
    )


def _median_ms(fn, batch: int, repeat: int) -> float:
    """Median milliseconds per image of fn() answering `batch` images, after one untimed warm-up
    call (first calls pay for allocation and thread start-up)."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000 / batch)
    return float(np.median(times))


def _costs(
    home: LunaHome,
    vault,
    projectors,
    test_set: TestSet,
    refiner,
    picture,
    settings: BenchmarkSettings,
) -> dict:
    # torch (the projectors' classes): only a benchmark run pays its import, not the definitions
    from luna_core.projector.models import parameter_count

    meta = vault.index.meta
    k, temperature, repeat = (
        settings.evaluation.k,
        settings.evaluation.temperature,
        settings.latency_repeat,
    )
    embeddings = (
        open_vision_store(home, vault.profile)
        .read("embeds", test_set.pairs.vision_rows[:64])
        .astype(np.float32)
    )
    one = embeddings[:1]
    batch = np.resize(embeddings, (64, embeddings.shape[1]))
    answer_times = []
    for e in np.resize(embeddings, (max(repeat, 50), embeddings.shape[1])):
        started = time.perf_counter()
        vault.vault_answer(e, k, temperature)
        answer_times.append((time.perf_counter() - started) * 1000)
    text_mb = store_bytes(home.text_store(vault.profile)) / 1e6
    index_mb = (meta.get("index_bytes", 0) + meta.get("lookup_bytes", 0)) / 1e6
    rows = [
        {
            "source": "true prompt",
            "parameters": "SDXL text encoders",
            "MB": "",
            "ms_batch_1": None,
            "ms_per_image_batch_64": None,
            "notes": "needs the prompt: the ceiling",
        },
        {
            "source": f"vault k={k}",
            "parameters": 0,
            "MB": f"{index_mb + text_mb:.2f}",
            "ms_batch_1": float(np.median(answer_times)),
            "ms_per_image_batch_64": float(np.median(answer_times)),
            "notes": "index + conditioning store; answers one image at a time",
        },
    ]
    for label, model, _ in projectors:
        rows.append(
            {
                "source": label,
                "parameters": parameter_count(model),
                "MB": f"{state_dict_bytes(model) / 1e6:.2f}",
                "ms_batch_1": _median_ms(
                    lambda m=model: vault.projector_answers(m, one), 1, repeat
                ),
                "ms_per_image_batch_64": _median_ms(
                    lambda m=model: vault.projector_answers(m, batch), 64, max(5, repeat // 2)
                ),
                "notes": "",
            }
        )
    for name in ("mean of train", "empty prompt"):
        rows.append(
            {
                "source": name,
                "parameters": 0,
                "MB": "one row",
                "ms_batch_1": 0.0,
                "ms_per_image_batch_64": 0.0,
                "notes": "a constant",
            }
        )
    for row in rows:
        for key in ("ms_batch_1", "ms_per_image_batch_64"):
            if isinstance(row[key], float):
                row[key] = round(row[key], 4)
    batching = {}
    if picture is not None:  # whole refiner calls on a test image, batched and --sequential
        side = min(picture.size)
        boxes = [
            Box(int(x), int(y), side // 4, side // 4)
            for x in (side // 8, side * 5 // 8)
            for y in (side // 8, side * 5 // 8)
        ]
        batching = refiner_batching(
            refiner,
            picture,
            boxes,
            RefineSettings(sampler=SamplerSettings(steps=settings.batching_steps, strength=0.5)),
            settings.batching_repeat,
        )
    return {
        "sources": rows,
        "repeats": repeat,
        "index": {
            "recall_at_10": float(meta.get("recall_at_10", 0.0)),
            "p50_ms": float(meta.get("p50_ms", 0.0)),
            "p99_ms": float(meta.get("p99_ms", 0.0)),
            "mb": index_mb,
            "factory": meta.get("plan", {}).get("factory", ""),
        },
        "vault_answer_p50_ms": float(np.percentile(answer_times, 50)),
        "vault_answer_p99_ms": float(np.percentile(answer_times, 99)),
        "batching": batching,
    }
