"""Fill the vault: image embeddings for ingested images, SDXL conditionings for unique prompts.

Both runners are incremental (only items with no row for the configured model, and no recorded
failure) and crash-safe: rows are written to Zarr past the committed high-water mark, then their
row numbers are committed in one catalog transaction. A killed run leaves uncommitted rows that
the next run overwrites. Catalog access is brief (the embedding assets run side by side).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from luna_core.home.home import LunaHome
from luna_core.models.encoders import VisionEncoder
from luna_core.models.profiles import (
    ModelProfile,
    check_model_reference,
    choose_device,
    choose_dtype,
)
from luna_core.vault.commits import VISION, StoreSpec, store_and_committer
from luna_core.vault.decode import Loaded, load_image, prefetch
from luna_core.vault.manifests import work_for
from luna_core.vault.segments import (
    Shard,
    store_bytes,
)
from luna_core.vault.store import VISION_LAYOUT

log = logging.getLogger(__name__)


@dataclass
class EmbedOptions:
    device: str = "auto"
    dtype: str = "auto"  # auto: the profile's default (tiny: float32), else see choose_dtype
    batch_size: int = 32
    decode_workers: int = 0  # image decode/preprocess threads; 0: one per core, at most 8
    commit_rows: int = 2048  # commit row numbers at least this often...
    commit_seconds: float = 5.0  # ...or this often, so a killed run loses little
    progress: bool = True


@dataclass
class EmbedReport:
    kind: str
    store_key: str
    model: str
    store_path: str
    device: str = ""
    dtype: str = ""
    added: int = 0
    already_present: int = 0
    failed: int = 0
    changed_since_ingest: int = 0
    truncated: int = 0  # prompts cut at 77 tokens (the literal rules only)
    chunked: int = 0  # prompts whose conditioning spans more than one chunk of 77 tokens
    rows_total: int = 0
    new_rows: tuple[int, int] = (0, 0)  # [start, end) rows written by this run
    seconds: float = 0.0
    model_seconds: float = 0.0  # time inside the model forward
    load_seconds: float = 0.0  # time to load the model (part of `seconds`)
    bytes_on_disk: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0


def device_dtype(profile: ModelProfile, options: EmbedOptions, report: EmbedReport):
    device = choose_device(options.device)
    dtype = choose_dtype(
        device, profile.default_dtype if options.dtype == "auto" else options.dtype
    )
    report.device, report.dtype = str(device), str(dtype).replace("torch.", "")
    return device, dtype


_ENCODERS: dict = {}


def encoder_for(cls, model: str, revision: str | None, device, dtype):
    """An encoder, kept for the next run in this process (a worker embedding shard after shard loads
    each model once). One per kind: a new model replaces the old one."""
    key = (cls.__name__, model, revision, str(device), str(dtype))
    cached = _ENCODERS.get(cls.__name__)
    if cached is None or cached[0] != key:
        _ENCODERS[cls.__name__] = (key, cls(model, revision, device, dtype))
    return _ENCODERS[cls.__name__][1]


# ---------------------------------------------------------------- images


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    return tqdm(
        total=total, desc=desc, unit=unit, disable=not enabled or total == 0, mininterval=0.5
    )


def embed_images(
    home: LunaHome,
    profile: ModelProfile,
    options: EmbedOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    shard: Shard | None = None,
) -> EmbedReport:
    """CLIP-ViT embeddings for every ingested image without one for the profile's vision model. With
    a `shard`, only its images, into its own segment store and manifests (`commit_segments`
    commits them)."""

    options = options or EmbedOptions()
    catalog_path, started = home.catalog_path, time.perf_counter()
    key = profile.vision_key
    path = home.vision_store(profile)
    report = EmbedReport(VISION, key, profile.vision_model, str(path))
    check_model_reference(profile.vision_model, "vision model")
    work_sql = """
        SELECT i.content_hash, min(i.path) AS path FROM images i
        WHERE i.status = 'ok'
          AND NOT EXISTS (SELECT 1 FROM vision_rows v WHERE v.store_key = $key AND v.content_hash =
              i.content_hash)
          AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $key AND f.item_key
              = i.content_hash)
          {shard}
        GROUP BY i.content_hash ORDER BY path"""
    work, report.already_present, next_row = work_for(
        home, profile, "vision_rows", key, work_sql, path, shard
    )
    if not work:  # nothing new: no model load, no store write
        return finish_report(report, path, started, next_row)

    loading = time.perf_counter()
    encoder = encoder_for(
        VisionEncoder,
        profile.vision_model,
        profile.vision_revision,
        *device_dtype(profile, options, report),
    )
    report.load_seconds = time.perf_counter() - loading
    fields = {"embeds": (encoder.width,)}
    spec = StoreSpec(
        VISION, key, profile.vision_model, profile.vision_revision, path, fields, VISION_LAYOUT
    )
    store, committer, offset = store_and_committer(
        catalog_path, spec, options.commit_rows, options.commit_seconds, shard
    )
    workers = options.decode_workers or min(8, os.cpu_count() or 1)
    bar = progress_bar(len(work), "vision embeddings", "img", options.progress)
    report.new_rows = (next_row, next_row)
    batch: list[Loaded] = []
    done = 0

    def flush() -> None:
        nonlocal next_row
        if not batch:
            return
        t0 = time.perf_counter()
        embeds = encoder.embed_pixels(np.stack([item.pixels for item in batch]))
        report.model_seconds += time.perf_counter() - t0
        store.write(next_row - offset, {"embeds": embeds})
        committer.add_rows(
            [{"key": item.content_hash, "row": next_row + i} for i, item in enumerate(batch)]
        )
        next_row += len(batch)
        report.added += len(batch)
        batch.clear()

    with store.writer():
        for loaded in prefetch(
            work,
            lambda item: load_image(item, encoder.preprocess),
            workers,
            window=options.batch_size * 3,
        ):
            if loaded.changed:
                report.changed_since_ingest += 1
            elif loaded.reason:
                committer.add_failure(
                    loaded.content_hash, loaded.path, loaded.reason, loaded.detail
                )
                report.failed += 1
                report.failures_by_reason[loaded.reason] = (
                    report.failures_by_reason.get(loaded.reason, 0) + 1
                )
            else:
                batch.append(loaded)
                if len(batch) == options.batch_size:
                    flush()
            done += 1
            bar.update(1)
            if on_progress and (done % options.batch_size == 0 or done == len(work)):
                on_progress(done, len(work))
        flush()
        committer.commit()
    bar.close()
    report.new_rows = (report.new_rows[0], next_row)
    return finish_report(report, path, started, next_row)


def finish_report(report: EmbedReport, path: Path, started: float, rows_total: int) -> EmbedReport:
    report.rows_total = rows_total
    report.bytes_on_disk = store_bytes(path)
    report.seconds = time.perf_counter() - started
    log.info(
        "%s store %s: %d added, %d present, %d failed in %.1fs",
        report.kind,
        report.store_key,
        report.added,
        report.already_present,
        report.failed,
        report.seconds,
    )
    return report


# ---------------------------------------------------------------- prompts
