"""Fill the vault: image embeddings for ingested images, SDXL conditionings for unique prompts.

Both runners are incremental (only items with no row for the configured model, and no recorded
failure) and crash-safe: rows are written to Zarr past the committed high-water mark, then their
row numbers are committed in one catalog transaction. A killed run leaves uncommitted rows that
the next run overwrites. Catalog access is brief (the embedding assets run side by side).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa

from luna_core.catalog import HELD_IMAGES, HELD_PROMPTS, open_catalog, transaction
from luna_core.errors import LunaConfigError
from luna_core.models.profiles import ModelProfile, check_model_reference, choose_device, choose_dtype
from luna_core.settings import LunaHome
from luna_core.storage import is_remote, move, parquet_bytes, read_parquet, write_whole
from luna_core.vault.segments import (
    LOCAL_MASK,
    Shard,
    committed_dir,
    pending_manifests,
    read_manifests,
    segment_path,
    segments_dir,
    shard_manifests,
    store_bytes,
)
from luna_core.vault.store import TEXT_LAYOUT, VISION_LAYOUT, RowStore

log = logging.getLogger(__name__)

VISION = "vision"
TEXT = "text"


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
    truncated: int = 0  # prompts over the 77-token window (text only)
    rows_total: int = 0
    new_rows: tuple[int, int] = (0, 0)  # [start, end) rows written by this run
    seconds: float = 0.0
    model_seconds: float = 0.0  # time inside the model forward
    bytes_on_disk: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def items_per_s(self) -> float:
        return self.added / self.seconds if self.seconds else 0.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _relative(path: Path) -> str:
    """A store's path as recorded in the catalog: relative to the home (the catalog's folder), so a moved
    or copied home points at its own stores; a URL on object storage."""
    if is_remote(path):
        return str(path)
    return str(Path("vault") / path.parent.name / path.name)


def _register_store(con, kind: str, key: str, model: str, revision: str | None, path: Path,
                    shapes: dict[str, tuple[int, ...]]) -> None:
    row = con.execute("SELECT shapes FROM vault_stores WHERE store_key = ?", [key]).fetchone()
    wanted = {k: list(v) for k, v in shapes.items()}
    if row is None:
        con.execute("INSERT INTO vault_stores VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [key, kind, model, revision, _relative(path), json.dumps(wanted), _utcnow()])
    elif json.loads(row[0]) != wanted:
        raise LunaConfigError(
            f"the catalog records {kind} store {key} with shapes {json.loads(row[0])}, but the configured model "
            f"gives {wanted}: the model changed under the same name; use another id/revision or a fresh store"
        )


_REVIVE = {
    "vision_rows": ("vision", HELD_IMAGES, '"row", now()'),
    "text_rows": ("text", HELD_PROMPTS, '"row", token_count, truncated, now()'),
}


def _pending(catalog_path: Path, rows_table: str, key: str, work_sql: str, path: Path) -> tuple[list, int, int]:
    """(items still to embed, rows already committed, next free row) for one store, in one catalog visit.

    Retired rows of items back in the library (a deleted file restored, an edit undone) are revived
    instead of embedded again. A store folder that is gone (deleted by hand, a lost disk) while the
    catalog still lists rows in it is rebuilt: its rows are forgotten, so every item is embedded again
    into a new store."""
    kind, held, columns = _REVIVE[rows_table]
    with open_catalog(catalog_path) as con:
        if not path.exists():
            with transaction(con):
                forgotten = con.execute(f"DELETE FROM {rows_table} WHERE store_key = ? RETURNING 1", [key]).fetchall()
                con.execute("DELETE FROM retired_rows WHERE store_key = ?", [key])
                con.execute("DELETE FROM embedding_failures WHERE store_key = ?", [key])
            if forgotten:
                log.warning("vault store %s is missing: its %d catalogued rows are forgotten and rebuilt", path,
                            len(forgotten))
        else:
            back = f"store_key = $key AND kind = '{kind}' AND item_key IN ({held})"
            with transaction(con):
                con.execute(f"INSERT OR IGNORE INTO {rows_table} SELECT store_key, item_key, {columns} "
                            f"FROM retired_rows WHERE {back}", {"key": key})
                revived = con.execute(f"DELETE FROM retired_rows WHERE {back} RETURNING 1", {"key": key}).fetchall()
            if revived:
                log.info("%d %s row(s) of items back in the library revived without embedding", len(revived), kind)
        work = con.execute(work_sql.format(shard=""), {"key": key}).fetchall()
        present = con.execute(f"SELECT count(*) FROM {rows_table} WHERE store_key = ?", [key]).fetchone()[0]
        # The base store's own rows only: shards' segments number theirs from 2**40 up.
        next_row = con.execute(f"""SELECT coalesce(max("row") + 1, 0) FROM (
            SELECT "row" FROM {rows_table} WHERE store_key = $key
            UNION ALL SELECT "row" FROM retired_rows WHERE store_key = $key) WHERE "row" <= $local""",
                               {"key": key, "local": LOCAL_MASK}).fetchone()[0]
    return work, present, next_row


def _device_dtype(profile: ModelProfile, options: EmbedOptions, report: EmbedReport):
    device = choose_device(options.device)
    dtype = choose_dtype(device, profile.default_dtype if options.dtype == "auto" else options.dtype)
    report.device, report.dtype = str(device), str(dtype).replace("torch.", "")
    return device, dtype


def _open_store(catalog_path: Path, kind: str, key: str, model: str, revision: str | None, path: Path,
                fields: dict[str, tuple[int, ...]], layout) -> RowStore:
    """Record the store in the catalog (refusing other shapes under the same key), then open it."""
    with open_catalog(catalog_path) as con:
        _register_store(con, kind, key, model, revision, path, fields)
    store = RowStore.open(path, fields, layout, attrs={"model": model, "kind": kind})
    if not store.checksummed:  # written before Luna added checksums: rewritten once, under the writer lock
        with store.writer():
            log.info("adding checksums to vault store %s: %s", path, store.add_checksums())
    return store


_ENCODERS: dict = {}


def _encoder(cls, model: str, revision: str | None, device, dtype):
    """An encoder, kept for the next run in this process (a worker embedding shard after shard loads
    each model once). One per kind: a new model replaces the old one."""
    key = (cls.__name__, model, revision, str(device), str(dtype))
    cached = _ENCODERS.get(cls.__name__)
    if cached is None or cached[0] != key:
        _ENCODERS[cls.__name__] = (key, cls(model, revision, device, dtype))
    return _ENCODERS[cls.__name__][1]


def _store_and_committer(catalog_path: Path, kind: str, key: str, model: str, revision: str | None, path: Path,
                         fields: dict, layout, options: "EmbedOptions", shard: Shard | None):
    """(store to write, committer, row offset): the store and the catalog, or a shard's segment and manifests."""
    if shard is None:
        return (_open_store(catalog_path, kind, key, model, revision, path, fields, layout),
                _Committer(catalog_path, kind, key, options), 0)
    store = RowStore.open(segment_path(path, shard), fields, layout, attrs={"model": model, "kind": kind,
                                                                            "shard": shard.name})
    return store, _ManifestWriter(path, kind, shard, options), shard.first_row


class _Committer:
    """Buffers (item, row) pairs and failures; commits them in one transaction every so often."""

    def __init__(self, catalog_path: Path, kind: str, store_key: str, options: EmbedOptions):
        self.catalog_path, self.kind, self.store_key, self.options = catalog_path, kind, store_key, options
        self.rows: list[dict] = []
        self.failures: list[dict] = []
        self.last = time.monotonic()

    def add_rows(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self.maybe_commit()

    def add_failure(self, item_key: str, path: str | None, reason: str, detail: str) -> None:
        self.failures.append({"item_key": item_key, "path": path, "reason": reason, "detail": detail})

    def maybe_commit(self) -> None:
        if len(self.rows) >= self.options.commit_rows or time.monotonic() - self.last >= self.options.commit_seconds:
            self.commit()

    def commit(self) -> None:
        if not self.rows and not self.failures:
            return
        now = _utcnow()
        failures = pa.Table.from_pylist(self.failures, schema=pa.schema(
            [("item_key", pa.string()), ("path", pa.string()), ("reason", pa.string()), ("detail", pa.string())]))
        if self.kind == VISION:
            rows = pa.Table.from_pylist(self.rows, schema=pa.schema([("key", pa.string()), ("row", pa.int64())]))
            insert = 'INSERT INTO vision_rows SELECT $store, key, "row", $now FROM new_rows'
        else:
            rows = pa.Table.from_pylist(self.rows, schema=pa.schema([
                ("key", pa.string()), ("row", pa.int64()), ("token_count", pa.int32()), ("truncated", pa.bool_())]))
            insert = 'INSERT INTO text_rows SELECT $store, key, "row", token_count, truncated, $now FROM new_rows'
        with open_catalog(self.catalog_path) as con, transaction(con, new_rows=rows, new_failures=failures):
            con.execute(insert, {"store": self.store_key, "now": now})
            con.execute("INSERT OR REPLACE INTO embedding_failures SELECT $store, item_key, path, reason, detail, $now "
                        "FROM new_failures", {"store": self.store_key, "now": now})
        self.rows, self.failures = [], []
        self.last = time.monotonic()


_MANIFEST_SCHEMA = pa.schema([("key", pa.string()), ("row", pa.int64()), ("token_count", pa.int32()),
                              ("truncated", pa.bool_()), ("path", pa.string()), ("reason", pa.string()),
                              ("detail", pa.string())])


class _ManifestWriter(_Committer):
    """A shard's committer: the same batches, written as Parquet manifests beside its segment store
    (each by one rename, so a manifest is whole or absent) instead of into the catalog."""

    def __init__(self, store_path: Path, kind: str, shard: Shard, options: EmbedOptions):
        super().__init__(Path(), kind, "", options)
        self.folder = segments_dir(store_path) / "manifests"
        self.prefix = f"{shard.name}-{uuid.uuid4().hex[:12]}"
        self.sequence = 0

    def commit(self) -> None:
        if not self.rows and not self.failures:
            return
        records = [{**row, "token_count": row.get("token_count"), "truncated": row.get("truncated")} for row in self.rows]
        records += [{"key": f["item_key"], "row": None, "path": f["path"], "reason": f["reason"], "detail": f["detail"]}
                    for f in self.failures]
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{self.prefix}-{self.sequence:06d}.parquet"
        write_whole(final, parquet_bytes(pa.Table.from_pylist(records, schema=_MANIFEST_SCHEMA)))
        self.sequence += 1
        self.rows, self.failures = [], []
        self.last = time.monotonic()


def _shard_pending(catalog_path: Path, rows_table: str, key: str, work_sql: str, store_path: Path,
                   shard: Shard) -> tuple[list, int, int]:
    """_pending for one shard, without writing the catalog: items of the shard with no committed row and
    none in a manifest waiting for the commit; the next row past both in the shard's segment."""
    column = "i.content_hash" if rows_table == "vision_rows" else "p.prompt_hash"
    with open_catalog(catalog_path, read_only=True) as con:
        work = con.execute(work_sql.format(shard=f"AND {shard.sql(column)}"), {"key": key}).fetchall()
        present = con.execute(f"""SELECT count(*) FROM {rows_table}
            WHERE store_key = $key AND "row" >= $lo AND "row" <= $hi""",
                              {"key": key, "lo": shard.first_row, "hi": shard.first_row + LOCAL_MASK}).fetchone()[0]
        # Retired rows keep their place: their item may come back and be revived there.
        top = con.execute(f"""SELECT max("row") FROM (SELECT "row" FROM {rows_table} WHERE store_key = $key
                                  UNION ALL SELECT "row" FROM retired_rows WHERE store_key = $key)
                              WHERE "row" >= $lo AND "row" <= $hi""",
                          {"key": key, "lo": shard.first_row, "hi": shard.first_row + LOCAL_MASK}).fetchone()[0]
    waiting: set[str] = set()
    next_row = shard.first_row if top is None else top + 1
    for manifest in shard_manifests(store_path, shard):
        table = read_parquet(manifest, columns=["key", "row"])
        waiting.update(table.column("key").to_pylist())
        rows = [r for r in table.column("row").to_pylist() if r is not None]
        next_row = max([next_row, *(r + 1 for r in rows)])
    return [item for item in work if item[0] not in waiting], present, next_row


def _work(home: LunaHome, profile: ModelProfile, rows_table: str, key: str, work_sql: str, path: Path,
          shard: Shard | None) -> tuple[list, int, int]:
    """(items to embed, rows present, next row) for the store, or for one shard of it."""
    if shard is not None:
        return _shard_pending(home.catalog_path, rows_table, key, work_sql, path, shard)
    if pending_manifests(path):  # rows shards embedded: commit them first, never embed them twice
        commit_segments(home, profile)
    return _pending(home.catalog_path, rows_table, key, work_sql, path)


def commit_segments(home: LunaHome, profile: ModelProfile) -> dict[str, int]:
    """Put every shard's new manifests into the catalog, one transaction per store; a manifest already
    committed adds nothing. Returns rows committed by kind."""
    done = {}
    for kind, key, path, model, revision, layout in (
            (VISION, profile.vision_key, home.vision_store(profile), profile.vision_model, profile.vision_revision,
             VISION_LAYOUT),
            (TEXT, profile.text_key, home.text_store(profile), profile.sdxl_model, profile.sdxl_revision, TEXT_LAYOUT)):
        manifests = pending_manifests(path)
        if not manifests:
            done[kind] = 0
            continue
        segment = next(segments_dir(path).glob("*.zarr"))
        fields = RowStore.open_readonly(segment, layout).fields
        table = read_manifests(manifests)
        now = _utcnow()
        with open_catalog(home.catalog_path) as con, transaction(con, manifest=table):
            _register_store(con, kind, key, model, revision, path, fields)
            if kind == VISION:
                added = con.execute("""INSERT OR IGNORE INTO vision_rows SELECT $store, key, "row", $now
                                       FROM manifest WHERE "row" IS NOT NULL RETURNING 1""",
                                    {"store": key, "now": now}).fetchall()
            else:
                added = con.execute("""INSERT OR IGNORE INTO text_rows
                                       SELECT $store, key, "row", token_count, truncated, $now
                                       FROM manifest WHERE "row" IS NOT NULL RETURNING 1""",
                                    {"store": key, "now": now}).fetchall()
            con.execute("""INSERT OR REPLACE INTO embedding_failures SELECT $store, key, path, reason, detail, $now
                           FROM manifest WHERE "row" IS NULL""", {"store": key, "now": now})
        target = committed_dir(path)
        target.mkdir(parents=True, exist_ok=True)
        for manifest in manifests:  # after the commit: a crash here only means committing them again, harmlessly
            move(manifest, target / manifest.name)
        done[kind] = len(added)
        log.info("%s store %s: %d rows committed from %d manifest(s)", kind, key, len(added), len(manifests))
    return done


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
    from PIL import Image

    content_hash, path = item
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _Loaded(content_hash, path, changed=True)
    except OSError as exc:
        return _Loaded(content_hash, path, reason="unreadable", detail=f"cannot read the file: {exc.strerror or exc}")
    if hashlib.sha256(data).hexdigest() != content_hash:
        return _Loaded(content_hash, path, changed=True)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _Loaded(content_hash, path, pixels=preprocess(image))
    except Exception as exc:  # any decoder error is this file's problem, not the batch's
        return _Loaded(content_hash, path, reason="decode_failed", detail=f"{type(exc).__name__}: {exc}")


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
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled or total == 0, mininterval=0.5)


def embed_images(
    home: LunaHome,
    profile: ModelProfile,
    options: EmbedOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    shard: Shard | None = None,
) -> EmbedReport:
    """CLIP-ViT embeddings for every ingested image without one for the profile's vision model. With a
    `shard`, only its images, into its own segment store and manifests (`commit_segments` commits them)."""
    from luna_core.models.encoders import VisionEncoder

    options = options or EmbedOptions()
    catalog_path, started = home.catalog_path, time.perf_counter()
    key = profile.vision_key
    path = home.vision_store(profile)
    report = EmbedReport(VISION, key, profile.vision_model, str(path))
    check_model_reference(profile.vision_model, "vision model")
    work_sql = """
        SELECT i.content_hash, min(i.path) AS path FROM images i
        WHERE i.status = 'ok'
          AND NOT EXISTS (SELECT 1 FROM vision_rows v WHERE v.store_key = $key AND v.content_hash = i.content_hash)
          AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $key AND f.item_key = i.content_hash)
          {shard}
        GROUP BY i.content_hash ORDER BY path"""
    work, report.already_present, next_row = _work(home, profile, "vision_rows", key, work_sql, path, shard)
    if not work:  # nothing new: no model load, no store write
        return _finish(report, path, started, next_row)

    encoder = _encoder(VisionEncoder, profile.vision_model, profile.vision_revision,
                       *_device_dtype(profile, options, report))
    fields = {"embeds": (encoder.width,)}
    store, committer, offset = _store_and_committer(catalog_path, VISION, key, profile.vision_model,
                                                    profile.vision_revision, path, fields, VISION_LAYOUT, options, shard)
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
        committer.add_rows([{"key": item.content_hash, "row": next_row + i} for i, item in enumerate(batch)])
        next_row += len(batch)
        report.added += len(batch)
        batch.clear()

    with store.writer():
        for loaded in prefetch(work, lambda item: _load_image(item, encoder.preprocess), workers,
                               window=options.batch_size * 3):
            if loaded.changed:
                report.changed_since_ingest += 1
            elif loaded.reason:
                committer.add_failure(loaded.content_hash, loaded.path, loaded.reason, loaded.detail)
                report.failed += 1
                report.failures_by_reason[loaded.reason] = report.failures_by_reason.get(loaded.reason, 0) + 1
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
    log.info("%s store %s: %d added, %d present, %d failed in %.1fs", report.kind, report.store_key, report.added,
             report.already_present, report.failed, report.seconds)
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
    profile's encoder pair; one row per text, shared by every image that used it. With a `shard`, only
    its prompts, into its own segment store and manifests."""
    from luna_core.models.encoders import SDXLTextEncoder

    options = options or EmbedOptions()
    catalog_path, started = home.catalog_path, time.perf_counter()
    key = profile.text_key
    path = home.text_store(profile)
    report = EmbedReport(TEXT, key, profile.sdxl_model, str(path))
    check_model_reference(profile.sdxl_model, "SDXL model")
    work_sql = """
        SELECT p.prompt_hash, p.prompt FROM prompts p
        WHERE NOT EXISTS (SELECT 1 FROM text_rows t WHERE t.store_key = $key AND t.prompt_hash = p.prompt_hash)
          AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $key AND f.item_key = p.prompt_hash)
          {shard}
        ORDER BY p.prompt_hash"""
    work, report.already_present, next_row = _work(home, profile, "text_rows", key, work_sql, path, shard)
    if not work:
        return _finish(report, path, started, next_row)

    encoder = _encoder(SDXLTextEncoder, profile.sdxl_model, profile.sdxl_revision,
                       *_device_dtype(profile, options, report))
    fields = {"prompt_embeds": (encoder.seq_len, encoder.width), "pooled_prompt_embeds": (encoder.pooled_width,)}
    store, committer, offset = _store_and_committer(catalog_path, TEXT, key, profile.sdxl_model, profile.sdxl_revision,
                                                    path, fields, TEXT_LAYOUT, options, shard)
    batch_size = max(1, min(options.batch_size, TEXT_LAYOUT.rows_per_shard))
    bar = _progress_bar(len(work), "text conditionings", "prompt", options.progress)
    report.new_rows = (next_row, next_row)
    with store.writer():
        for start in range(0, len(work), batch_size):
            items = work[start : start + batch_size]
            texts = [text for _, text in items]
            try:
                counts = encoder.token_counts(texts)
                t0 = time.perf_counter()
                prompt_embeds, pooled = encoder.encode(texts)
                report.model_seconds += time.perf_counter() - t0
            except Exception as exc:  # one bad batch must not stop the rest: retry its prompts one by one
                log.warning("text batch failed (%s); encoding its prompts one at a time", exc)
                items, counts, prompt_embeds, pooled = _encode_one_by_one(encoder, items, committer, report)
                if not items:
                    continue
            store.write(next_row - offset, {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled})
            rows = [{"key": h, "row": next_row + i, "token_count": n, "truncated": n > encoder.seq_len}
                    for i, ((h, _), n) in enumerate(zip(items, counts))]
            committer.add_rows(rows)
            report.truncated += sum(r["truncated"] for r in rows)
            next_row += len(items)
            report.added += len(items)
            bar.update(len(texts))
            if on_progress:
                on_progress(min(start + batch_size, len(work)), len(work))
        committer.commit()
    bar.close()
    report.new_rows = (report.new_rows[0], next_row)
    return _finish(report, path, started, next_row)


def _encode_one_by_one(encoder, items, committer: _Committer, report: EmbedReport):
    kept, counts, embeds, pooled = [], [], [], []
    for prompt_hash, text in items:
        try:
            count = encoder.token_counts([text])[0]
            e, p = encoder.encode([text])
        except Exception as exc:
            committer.add_failure(prompt_hash, None, "encode_failed", f"{type(exc).__name__}: {exc}")
            report.failed += 1
            report.failures_by_reason["encode_failed"] = report.failures_by_reason.get("encode_failed", 0) + 1
            continue
        kept.append((prompt_hash, text))
        counts.append(count)
        embeds.append(e[0])
        pooled.append(p[0])
    if not kept:
        return [], [], None, None
    return kept, counts, np.stack(embeds), np.stack(pooled)
