"""Sharded embedding: each shard writes its own segment store and manifests; one committing step
folds the manifests into the catalog (no shared lock across machines)."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa

from luna_core.catalog.connection import open_catalog, transaction
from luna_core.home.home import LunaHome
from luna_core.home.storage import move, read_parquet
from luna_core.models.profiles import ModelProfile
from luna_core.vault.commits import TEXT, VISION, pending_work, register_store, utcnow
from luna_core.vault.segments import (
    LOCAL_MASK,
    Shard,
    committed_dir,
    pending_manifests,
    read_manifests,
    segments_dir,
    shard_manifests,
)
from luna_core.vault.store import TEXT_LAYOUT, VISION_LAYOUT, RowStore

log = logging.getLogger(__name__)


def shard_pending_work(
    catalog_path: Path, rows_table: str, key: str, work_sql: str, store_path: Path, shard: Shard
) -> tuple[list, int, int]:
    """pending_work for one shard, without writing the catalog: items of the shard with no committed
    row and none in a manifest waiting for the commit; the next row past both in the shard's
    segment."""
    column = "i.content_hash" if rows_table == "vision_rows" else "p.prompt_hash"
    with open_catalog(catalog_path, read_only=True) as con:
        work = con.execute(
            work_sql.format(shard=f"AND {shard.sql(column)}"), {"key": key}
        ).fetchall()
        present = con.execute(
            f"""SELECT count(*) FROM {rows_table}
            WHERE store_key = $key AND "row" >= $lo AND "row" <= $hi""",
            {"key": key, "lo": shard.first_row, "hi": shard.first_row + LOCAL_MASK},
        ).fetchone()[0]
        # Retired rows keep their place: their item may come back and be revived there.
        top = con.execute(
            f"""SELECT max("row") FROM (SELECT "row" FROM {rows_table} WHERE store_key = $key
                                  UNION ALL SELECT "row" FROM retired_rows WHERE store_key = $key)
                              WHERE "row" >= $lo AND "row" <= $hi""",
            {"key": key, "lo": shard.first_row, "hi": shard.first_row + LOCAL_MASK},
        ).fetchone()[0]
    waiting: set[str] = set()
    next_row = shard.first_row if top is None else top + 1
    for manifest in shard_manifests(store_path, shard):
        table = read_parquet(manifest, columns=["key", "row"])
        waiting.update(table.column("key").to_pylist())
        rows = [r for r in table.column("row").to_pylist() if r is not None]
        next_row = max([next_row, *(r + 1 for r in rows)])
    return [item for item in work if item[0] not in waiting], present, next_row


def work_for(
    home: LunaHome,
    profile: ModelProfile,
    rows_table: str,
    key: str,
    work_sql: str,
    path: Path,
    shard: Shard | None,
) -> tuple[list, int, int]:
    """(items to embed, rows present, next row) for the store, or for one shard of it."""
    if shard is not None:
        return shard_pending_work(home.catalog_path, rows_table, key, work_sql, path, shard)
    if pending_manifests(path):  # rows shards embedded: commit them first, never embed them twice
        commit_segments(home, profile)
    return pending_work(home.catalog_path, rows_table, key, work_sql, path)


def commit_segments(home: LunaHome, profile: ModelProfile) -> dict[str, int]:
    """Put every shard's new manifests into the catalog, one transaction per store; a manifest
    already committed adds nothing. Returns rows committed by kind."""
    done = {}
    for kind, key, path, model, revision, layout in (
        (
            VISION,
            profile.vision_key,
            home.vision_store(profile),
            profile.vision_model,
            profile.vision_revision,
            VISION_LAYOUT,
        ),
        (
            TEXT,
            profile.text_key,
            home.text_store(profile),
            profile.sdxl_model,
            profile.sdxl_revision,
            TEXT_LAYOUT,
        ),
    ):
        manifests = pending_manifests(path)
        if not manifests:
            done[kind] = 0
            continue
        segment = next(segments_dir(path).glob("*.zarr"))
        fields = RowStore.open_readonly(segment, layout).fields
        table = read_manifests(manifests)
        # manifests written before conditionings had chunks: one each
        if "chunks" not in table.column_names:
            table = table.append_column("chunks", pa.array([1] * table.num_rows, pa.int32()))
        now = utcnow()
        with open_catalog(home.catalog_path) as con, transaction(con, manifest=table):
            register_store(con, kind, key, model, revision, path, fields)
            if kind == VISION:
                added = con.execute(
                    """INSERT OR IGNORE INTO vision_rows SELECT $store, key, "row", $now
                                       FROM manifest WHERE "row" IS NOT NULL RETURNING 1""",
                    {"store": key, "now": now},
                ).fetchall()
            else:
                added = con.execute(
                    """INSERT OR IGNORE INTO text_rows
                                       (store_key, prompt_hash, "row", token_count, truncated,
                                           committed_at, chunks)
                                       SELECT $store, key, "row", token_count, truncated, $now,
                                           coalesce(chunks, 1)
                                       FROM manifest WHERE "row" IS NOT NULL RETURNING 1""",
                    {"store": key, "now": now},
                ).fetchall()
            con.execute(
                """INSERT OR REPLACE INTO embedding_failures
                   SELECT $store, key, path, reason, detail, $now
                           FROM manifest WHERE "row" IS NULL""",
                {"store": key, "now": now},
            )
        target = committed_dir(path)
        target.mkdir(parents=True, exist_ok=True)
        # after the commit: a crash here only means committing them again, harmlessly
        for manifest in manifests:
            move(manifest, target / manifest.name)
        done[kind] = len(added)
        log.info(
            "%s store %s: %d rows committed from %d manifest(s)",
            kind,
            key,
            len(added),
            len(manifests),
        )
    return done
