"""Which items a vault store still needs, and committing the rows written: into the catalog in one
transaction (a single store), or as Parquet manifests beside a shard's segment store, folded into
the catalog later by `commit_segments`. Rows no commit names are garbage that the next run
overwrites."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from luna_core.catalog.connection import HELD_IMAGES, HELD_PROMPTS, open_catalog, transaction
from luna_core.errors import LunaConfigError
from luna_core.home.storage import is_remote, parquet_bytes, write_whole
from luna_core.vault.codec import FLOAT16
from luna_core.vault.segments import (
    LOCAL_MASK,
    Shard,
    segment_path,
    segments_dir,
)
from luna_core.vault.store import RowStore

log = logging.getLogger(__name__)

VISION = "vision"
TEXT = "text"


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def recorded_path(path: Path) -> str:
    """A store's path as recorded in the catalog: relative to the home (the catalog's folder), so a
    moved or copied home points at its own stores; a URL on object storage."""
    if is_remote(path):
        return str(path)
    return str(Path("vault") / path.parent.name / path.name)


def register_store(
    con,
    kind: str,
    key: str,
    model: str,
    revision: str | None,
    path: Path,
    shapes: dict[str, tuple[int, ...]],
) -> None:
    row = con.execute("SELECT shapes FROM vault_stores WHERE store_key = ?", [key]).fetchone()
    wanted = {k: list(v) for k, v in shapes.items()}
    if row is None:
        con.execute(
            "INSERT INTO vault_stores VALUES (?, ?, ?, ?, ?, ?, ?)",
            [key, kind, model, revision, recorded_path(path), json.dumps(wanted), utcnow()],
        )
    elif json.loads(row[0]) != wanted:
        raise LunaConfigError(
            f"the catalog records {kind} store {key} with shapes {json.loads(row[0])}, but the "
            "configured model "
            f"gives {wanted}: the model changed under the same name; use another id/revision or "
            "a fresh store"
        )


_REVIVE = {
    "vision_rows": ("vision", HELD_IMAGES, '"row", now()'),
    "text_rows": (
        "text",
        HELD_PROMPTS,
        '"row", token_count, truncated, now(), coalesce(chunks, 1)',
    ),
}


def pending_work(
    catalog_path: Path, rows_table: str, key: str, work_sql: str, path: Path
) -> tuple[list, int, int]:
    """(items still to embed, rows already committed, next free row) for one store, in one catalog
    visit.

    Retired rows of items back in the library (a deleted file restored, an edit undone) are revived
    instead of embedded again. A store folder that is gone (deleted by hand, a lost disk) while the
    catalog still lists rows in it is rebuilt: its rows are forgotten, so every item is embedded
    again into a new store."""
    kind, held, columns = _REVIVE[rows_table]
    with open_catalog(catalog_path) as con:
        if not path.exists():
            with transaction(con):
                forgotten = con.execute(
                    f"DELETE FROM {rows_table} WHERE store_key = ? RETURNING 1", [key]
                ).fetchall()
                con.execute("DELETE FROM retired_rows WHERE store_key = ?", [key])
                con.execute("DELETE FROM embedding_failures WHERE store_key = ?", [key])
            if forgotten:
                log.warning(
                    "vault store %s is missing: its %d catalogued rows are forgotten and rebuilt",
                    path,
                    len(forgotten),
                )
        else:
            # A conditioning's chunk rows 2.. are keyed KEY#1, KEY#2...: they come back with it.
            item = "split_part(item_key, '#', 1)" if kind == "text" else "item_key"
            back = f"store_key = $key AND kind = '{kind}' AND {item} IN ({held})"
            with transaction(con):
                con.execute(
                    f"INSERT OR IGNORE INTO {rows_table} SELECT store_key, item_key, {columns} "
                    f"FROM retired_rows WHERE {back}",
                    {"key": key},
                )
                revived = con.execute(
                    f"DELETE FROM retired_rows WHERE {back} RETURNING 1", {"key": key}
                ).fetchall()
            if revived:
                log.info(
                    "%d %s row(s) of items back in the library revived without embedding",
                    len(revived),
                    kind,
                )
        work = con.execute(work_sql.format(shard=""), {"key": key}).fetchall()
        present = con.execute(
            f"SELECT count(*) FROM {rows_table} WHERE store_key = ?", [key]
        ).fetchone()[0]
        # The base store's own rows only: shards' segments number theirs from 2**40 up.
        next_row = con.execute(
            f"""SELECT coalesce(max("row") + 1, 0) FROM (
            SELECT "row" FROM {rows_table} WHERE store_key = $key
            UNION ALL SELECT "row" FROM retired_rows WHERE store_key = $key) WHERE "row" <=
                $local""",
            {"key": key, "local": LOCAL_MASK},
        ).fetchone()[0]
    return work, present, next_row


@dataclass(frozen=True)
class StoreSpec:
    """One vault store: its kind (vision or text), its key, the model that fills it, where it lives,
    and the shape and layout of its rows."""

    kind: str
    key: str
    model: str
    revision: str | None
    path: Path
    fields: dict[str, tuple[int, ...]]
    layout: object
    codec: str = FLOAT16  # how a new store keeps its values (luna_core.vault.codec)


def open_store(catalog_path: Path, spec: StoreSpec) -> RowStore:
    """Record the store in the catalog (refusing other shapes under the same key), then open it."""
    with open_catalog(catalog_path) as con:
        register_store(con, spec.kind, spec.key, spec.model, spec.revision, spec.path, spec.fields)
    store = RowStore.open(
        spec.path,
        spec.fields,
        spec.layout,
        attrs={"model": spec.model, "kind": spec.kind},
        codec=spec.codec,
    )
    # written before Luna added checksums: rewritten once, under the writer lock
    if not store.checksummed:
        with store.writer():
            log.info("adding checksums to vault store %s: %s", spec.path, store.add_checksums())
    return store


def store_and_committer(
    catalog_path: Path,
    spec: StoreSpec,
    commit_rows: int,
    commit_seconds: float,
    shard: Shard | None,
):
    """(store to write, committer, row offset): the store and the catalog, or a shard's segment
    and manifests."""
    if shard is None:
        return (
            open_store(catalog_path, spec),
            Committer(catalog_path, spec.kind, spec.key, commit_rows, commit_seconds),
            0,
        )
    store = RowStore.open(
        segment_path(spec.path, shard),
        spec.fields,
        spec.layout,
        attrs={"model": spec.model, "kind": spec.kind, "shard": shard.name},
        codec=spec.codec,
    )
    return (
        store,
        ManifestWriter(spec.path, spec.kind, shard, commit_rows, commit_seconds),
        shard.first_row,
    )


class Committer:
    """Buffers (item, row) pairs and failures; commits them in one transaction every so often."""

    def __init__(
        self, catalog_path: Path, kind: str, store_key: str, commit_rows: int, commit_seconds: float
    ):
        self.catalog_path, self.kind, self.store_key = catalog_path, kind, store_key
        self.commit_rows, self.commit_seconds = commit_rows, commit_seconds
        self.rows: list[dict] = []
        self.failures: list[dict] = []
        self.last = time.monotonic()

    def add_rows(self, rows: list[dict]) -> None:
        self.rows.extend(rows)
        self.maybe_commit()

    def add_failure(self, item_key: str, path: str | None, reason: str, detail: str) -> None:
        self.failures.append(
            {"item_key": item_key, "path": path, "reason": reason, "detail": detail}
        )

    def maybe_commit(self) -> None:
        if (
            len(self.rows) >= self.commit_rows
            or time.monotonic() - self.last >= self.commit_seconds
        ):
            self.commit()

    def commit(self) -> None:
        if not self.rows and not self.failures:
            return
        now = utcnow()
        failures = pa.Table.from_pylist(
            self.failures,
            schema=pa.schema(
                [
                    ("item_key", pa.string()),
                    ("path", pa.string()),
                    ("reason", pa.string()),
                    ("detail", pa.string()),
                ]
            ),
        )
        if self.kind == VISION:
            rows = pa.Table.from_pylist(
                self.rows, schema=pa.schema([("key", pa.string()), ("row", pa.int64())])
            )
            insert = 'INSERT INTO vision_rows SELECT $store, key, "row", $now FROM new_rows'
        else:
            rows = pa.Table.from_pylist(
                self.rows,
                schema=pa.schema(
                    [
                        ("key", pa.string()),
                        ("row", pa.int64()),
                        ("token_count", pa.int32()),
                        ("truncated", pa.bool_()),
                        ("chunks", pa.int32()),
                    ]
                ),
            )
            insert = (
                'INSERT INTO text_rows (store_key, prompt_hash, "row", token_count, truncated, '
                "committed_at, chunks) "
                'SELECT $store, key, "row", token_count, truncated, $now, chunks FROM new_rows'
            )
        with (
            open_catalog(self.catalog_path) as con,
            transaction(con, new_rows=rows, new_failures=failures),
        ):
            con.execute(insert, {"store": self.store_key, "now": now})
            con.execute(
                "INSERT OR REPLACE INTO embedding_failures SELECT $store, item_key, path, "
                "reason, detail, $now "
                "FROM new_failures",
                {"store": self.store_key, "now": now},
            )
        self.rows, self.failures = [], []
        self.last = time.monotonic()


MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("row", pa.int64()),
        ("token_count", pa.int32()),
        ("truncated", pa.bool_()),
        ("path", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("chunks", pa.int32()),
    ]
)


class ManifestWriter(Committer):
    """A shard's committer: the same batches, written as Parquet manifests beside its segment store
    (each by one rename, so a manifest is whole or absent) instead of into the catalog."""

    def __init__(
        self, store_path: Path, kind: str, shard: Shard, commit_rows: int, commit_seconds: float
    ):
        super().__init__(Path(), kind, "", commit_rows, commit_seconds)
        self.folder = segments_dir(store_path) / "manifests"
        self.prefix = f"{shard.name}-{uuid.uuid4().hex[:12]}"
        self.sequence = 0

    def commit(self) -> None:
        if not self.rows and not self.failures:
            return
        records = [
            {
                **row,
                "token_count": row.get("token_count"),
                "truncated": row.get("truncated"),
                "chunks": row.get("chunks"),
            }
            for row in self.rows
        ]
        records += [
            {
                "key": f["item_key"],
                "row": None,
                "path": f["path"],
                "reason": f["reason"],
                "detail": f["detail"],
            }
            for f in self.failures
        ]
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{self.prefix}-{self.sequence:06d}.parquet"
        write_whole(final, parquet_bytes(pa.Table.from_pylist(records, schema=MANIFEST_SCHEMA)))
        self.sequence += 1
        self.rows, self.failures = [], []
        self.last = time.monotonic()
