"""Fill the vault: image embeddings for ingested images, SDXL conditionings for unique prompts.

Both runners are incremental (only items with no row for the configured model, and no recorded
failure) and crash-safe: rows are written to Zarr past the committed high-water mark, then their
row numbers are committed in one catalog transaction. A killed run leaves uncommitted rows that
the next run overwrites. Catalog access is brief (the embedding assets run side by side).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from luna_core.home.home import LunaHome
from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
from luna_core.models.profiles import (
    ModelProfile,
    check_model_reference,
    choose_device,
    choose_dtype,
)
from luna_core.prompts.encode import encode_many
from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import chunk_key
from luna_core.vault.commits import (
    TEXT,
    VISION,
    Committer,
    StoreSpec,
    store_and_committer,
    work_for,
)
from luna_core.vault.segments import (
    Shard,
    store_bytes,
)
from luna_core.vault.store import TEXT_LAYOUT, VISION_LAYOUT

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
    bytes_on_disk: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0


def _device_dtype(profile: ModelProfile, options: EmbedOptions, report: EmbedReport):
    device = choose_device(options.device)
    dtype = choose_dtype(
        device, profile.default_dtype if options.dtype == "auto" else options.dtype
    )
    report.device, report.dtype = str(device), str(dtype).replace("torch.", "")
    return device, dtype


_ENCODERS: dict = {}


def _encoder(cls, model: str, revision: str | None, device, dtype):
    """An encoder, kept for the next run in this process (a worker embedding shard after shard loads
    each model once). One per kind: a new model replaces the old one."""
    key = (cls.__name__, model, revision, str(device), str(dtype))
    cached = _ENCODERS.get(cls.__name__)
    if cached is None or cached[0] != key:
        _ENCODERS[cls.__name__] = (key, cls(model, revision, device, dtype))
    return _ENCODERS[cls.__name__][1]


# ---------------------------------------------------------------- images


@dataclass
class _Loaded:
    content_hash: str
    path: str
    pixels: np.ndarray | None = None
    reason: str | None = None  # failure reason code
    detail: str = ""
    changed: bool = False  # the file no longer holds the ingested bytes: the next ingest sees it


def _load_image(item: tuple[str, str], preprocess) -> _Loaded:
    content_hash, path = item
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _Loaded(content_hash, path, changed=True)
    except OSError as exc:
        return _Loaded(
            content_hash,
            path,
            reason="unreadable",
            detail=f"cannot read the file: {exc.strerror or exc}",
        )
    if hashlib.sha256(data).hexdigest() != content_hash:
        return _Loaded(content_hash, path, changed=True)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _Loaded(content_hash, path, pixels=preprocess(image))
    except Exception as exc:  # any decoder error is this file's problem, not the batch's
        return _Loaded(
            content_hash, path, reason="decode_failed", detail=f"{type(exc).__name__}: {exc}"
        )


def prefetch(items: Iterable, fn: Callable, workers: int, window: int) -> Iterator:
    """fn over items in worker threads, results in input order, at most `window` in flight.

    Pillow and NumPy release the GIL while decoding, resizing and normalizing, so threads keep the
    model fed while it runs."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="luna-decode") as pool:
        iterator = iter(items)
        pending = deque(pool.submit(fn, item) for item in islice(iterator, window))
        while pending:
            result = pending.popleft().result()
            for item in islice(iterator, 1):
                pending.append(pool.submit(fn, item))
            yield result


def _progress_bar(total: int, desc: str, unit: str, enabled: bool):
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
        return _finish(report, path, started, next_row)

    encoder = _encoder(
        VisionEncoder,
        profile.vision_model,
        profile.vision_revision,
        *_device_dtype(profile, options, report),
    )
    fields = {"embeds": (encoder.width,)}
    spec = StoreSpec(
        VISION, key, profile.vision_model, profile.vision_revision, path, fields, VISION_LAYOUT
    )
    store, committer, offset = store_and_committer(
        catalog_path, spec, options.commit_rows, options.commit_seconds, shard
    )
    workers = options.decode_workers or min(8, os.cpu_count() or 1)
    bar = _progress_bar(len(work), "vision embeddings", "img", options.progress)
    report.new_rows = (next_row, next_row)
    batch: list[_Loaded] = []
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
            lambda item: _load_image(item, encoder.preprocess),
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
    return _finish(report, path, started, next_row)


def _finish(report: EmbedReport, path: Path, started: float, rows_total: int) -> EmbedReport:
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


def embed_prompts(
    home: LunaHome,
    profile: ModelProfile,
    options: EmbedOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    shard: Shard | None = None,
) -> EmbedReport:
    """SDXL conditionings for every unique prompt text (positive and negative) without one for the
    profile's encoder pair; one row per text, shared by every image that used it. With a `shard`,
    only its prompts, into its own segment store and manifests."""

    options = options or EmbedOptions()
    catalog_path, started = home.catalog_path, time.perf_counter()
    key = profile.text_key
    path = home.text_store(profile)
    report = EmbedReport(TEXT, key, profile.sdxl_model, str(path))
    check_model_reference(profile.sdxl_model, "SDXL model")
    work_sql = """
        SELECT p.prompt_hash, p.prompt, p.syntax FROM prompts p
        WHERE NOT EXISTS (SELECT 1 FROM text_rows t WHERE t.store_key = $key AND t.prompt_hash =
            p.prompt_hash)
          AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $key AND f.item_key
              = p.prompt_hash)
          {shard}
        ORDER BY p.prompt_hash"""
    work, report.already_present, next_row = work_for(
        home, profile, "text_rows", key, work_sql, path, shard
    )
    if not work:
        return _finish(report, path, started, next_row)

    encoder = _encoder(
        SDXLTextEncoder,
        profile.sdxl_model,
        profile.sdxl_revision,
        *_device_dtype(profile, options, report),
    )
    fields = {
        "prompt_embeds": (encoder.seq_len, encoder.width),
        "pooled_prompt_embeds": (encoder.pooled_width,),
    }
    spec = StoreSpec(
        TEXT,
        key,
        profile.sdxl_model,
        profile.sdxl_revision,
        path,
        fields,
        TEXT_LAYOUT,
        codec=home.text_codec(),
    )
    store, committer, offset = store_and_committer(
        catalog_path, spec, options.commit_rows, options.commit_seconds, shard
    )
    batch_size = max(1, min(options.batch_size, TEXT_LAYOUT.rows_per_shard))
    bar = _progress_bar(len(work), "text conditionings", "prompt", options.progress)
    report.new_rows = (next_row, next_row)
    with store.writer():
        for start in range(0, len(work), batch_size):
            items = work[start : start + batch_size]
            parsed = [parse(text, syntax) for _, text, syntax in items]
            try:
                counts = encoder.token_counts([p.plain for p in parsed])
                t0 = time.perf_counter()
                encoded = encode_many(encoder, parsed)
                report.model_seconds += time.perf_counter() - t0
            except (
                Exception
            ) as exc:  # one bad batch must not stop the rest: retry its prompts one by one
                log.warning("text batch failed (%s); encoding its prompts one at a time", exc)
                items, parsed, counts, encoded = _encode_one_by_one(
                    encoder, items, parsed, committer, report
                )
                if not items:
                    continue
            rows, embeds, pooled = [], [], []
            for (key, _, _), prompt, count, (tokens, pool) in zip(items, parsed, counts, encoded):
                chunks = tokens.shape[0] // encoder.seq_len
                embeds.append(tokens.reshape(chunks, encoder.seq_len, -1))
                pooled.append(
                    np.repeat(pool[None], chunks, axis=0)
                )  # every chunk row carries the prompt's pooled
                truncated = prompt.syntax == "literal" and count > encoder.seq_len
                rows += [
                    {
                        "key": chunk_key(key, i),
                        "row": next_row + len(rows) + i,
                        "token_count": count,
                        "truncated": truncated,
                        "chunks": chunks if i == 0 else 0,
                    }
                    for i in range(chunks)
                ]
                report.truncated += truncated
                report.chunked += chunks > 1
            store.write(
                next_row - offset,
                {
                    "prompt_embeds": np.concatenate(embeds),
                    "pooled_prompt_embeds": np.concatenate(pooled),
                },
            )
            committer.add_rows(rows)
            next_row += len(rows)
            report.added += len(items)
            bar.update(len(items))
            if on_progress:
                on_progress(min(start + batch_size, len(work)), len(work))
        committer.commit()
    bar.close()
    report.new_rows = (report.new_rows[0], next_row)
    return _finish(report, path, started, next_row)


def _encode_one_by_one(encoder, items, parsed, committer: Committer, report: EmbedReport):
    """The prompts of a failed batch, each on its own: one that fails is recorded, the rest are
    kept."""
    kept, kept_parsed, counts, encoded = [], [], [], []
    for item, prompt in zip(items, parsed):
        try:
            count = encoder.token_counts([prompt.plain])[0]
            (answer,) = encode_many(encoder, [prompt])
        except Exception as exc:
            committer.add_failure(item[0], None, "encode_failed", f"{type(exc).__name__}: {exc}")
            report.failed += 1
            report.failures_by_reason["encode_failed"] = (
                report.failures_by_reason.get("encode_failed", 0) + 1
            )
            continue
        kept.append(item)
        kept_parsed.append(prompt)
        counts.append(count)
        encoded.append(answer)
    return kept, kept_parsed, counts, encoded
