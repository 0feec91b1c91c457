"""Keep the index in step with the vault: add new embeddings, or rebuild and retrain."""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from luna_core.catalog.connection import open_catalog
from luna_core.errors import CorruptStoreError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.index.faiss_index import (
    IndexSettings,
    build_index,
    plan_index,
    searcher_for,
    single_query_latency,
)
from luna_core.index.store import IndexStore, index_store, load_index, vault_fetch
from luna_core.models.profiles import ModelProfile
from luna_core.vault.segments import open_vision_store, store_exists
from luna_core.vault.store import RowStore

log = logging.getLogger(__name__)

ROW_SUFFIXES = ("_row", "_chunks")  # vault row columns: read with their own defaults
# conditioning rows from *_row on
LOOKUP_COLUMNS = (
    "image_id",
    "content_hash",
    "path",
    "generator",
    "split",
    "prompt",
    "negative_prompt",
    "prompt_syntax",  # the rules the prompts are read by: a ComfyUI graph encodes them again
    # what a person browsing the neighbours sees and filters on, without a catalog query
    "model",
    "loras",
    "sampler",
    "scheduler",
    "seed",
    "steps",
    "cfg_scale",
    "mtime_ns",
    "lora_hashes",  # A1111's "Lora hashes" text: how refinement finds a neighbour's LoRA file
    "prompt_row",
    "negative_row",
    "vision_row",  # vision_row: where re-ranking reads
    "prompt_chunks",
    "negative_chunks",
)


@dataclass
class IndexReport:
    action: str  # built | added | removed | refreshed (lookup only) | unchanged
    reason: str
    version: int
    vectors: int
    added: int = 0
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    removed: int = 0


def _library_rows(home: LunaHome):
    with open_catalog(home.catalog_path) as con:
        if not con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'library'"
        ).fetchall()[0][0]:
            raise NotBuiltError(
                "the catalog has no `library` view yet: materialize luna_catalog first"
            )
        in_view = {
            name
            for (name,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'library'"
            ).fetchall()
        }

        def column(
            name: str,
        ) -> str:  # a view made by an older Luna lacks the newest columns until rebuilt
            if name not in in_view:
                return f"NULL::VARCHAR AS {name}"
            return "seed::VARCHAR AS seed" if name == "seed" else name

        table = con.sql(f"""
            SELECT {", ".join(column(c) for c in LOOKUP_COLUMNS if not c.endswith(ROW_SUFFIXES))},
                   coalesce(prompt_row, -1) AS prompt_row, coalesce(negative_row, -1) AS
                       negative_row,
                   vision_row, coalesce(prompt_chunks, 1) AS prompt_chunks,
                   coalesce(negative_chunks, 1) AS negative_chunks
            FROM library WHERE vision_row IS NOT NULL ORDER BY image_id""").to_arrow_table()
    return table


def _vectors(vision: RowStore, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), vision.fields["embeds"][0]), dtype=np.float32)
    for start in range(0, len(rows), 65536):  # bounded reads: fp16 → fp32 a slice at a time
        out[start : start + 65536] = vision.read("embeds", rows[start : start + 65536])
    return out


def lookup_digest(lookup) -> str:
    """What the published lookup holds (paths, prompts, conditioning rows, splits), as one digest. A
    number column's null slots hold whatever bytes DuckDB left there: they are zeroed, and the
    nulls hashed apart."""

    columns, names = [], []
    for name, column in zip(lookup.column_names, lookup.columns):
        if column.null_count and (
            pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
        ):
            columns += [pc.fill_null(column, 0), pc.is_null(column)]
            names += [name, f"{name} is null"]
        else:
            columns.append(column)
            names.append(name)
    canonical = pa.table(columns, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, canonical.schema) as writer:
        writer.write_table(canonical)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:32]


@dataclass(frozen=True)
class IndexDelta:
    """How the library differs from the loaded index: every (vault row, image id), which are new,
    which departed images are still in the index, and how many vectors were removed from it
    already."""

    rows: np.ndarray
    ids: np.ndarray
    new_mask: np.ndarray
    departed: np.ndarray
    removed: int


def _update_in_place(
    store: IndexStore,
    loaded,
    vision: RowStore,
    delta: IndexDelta,
    lookup,
    digest: str,
    meta_common: dict,
    started: float,
) -> IndexReport:
    """Add the new embeddings to the loaded index (departed ones already removed, or left
    unanswered) and publish it with the new lookup; nothing is published when nothing changed."""
    rows, ids, new_mask, departed, removed = (
        delta.rows,
        delta.ids,
        delta.new_mask,
        delta.departed,
        delta.removed,
    )
    old, index = loaded.meta, loaded.index
    added = int(new_mask.sum())
    if added == 0 and removed == 0 and old.get("lookup_digest") == digest and old.get("digests"):
        return IndexReport(
            "unchanged",
            "no new embeddings, lookup unchanged",
            store.current().number,
            int(index.ntotal) - len(departed),
            seconds=time.perf_counter() - started,
            meta=old,
        )
    if added:
        index.add_with_ids(_vectors(vision, rows[new_mask]), ids[new_mask])
    live = int(index.ntotal) - len(departed)
    sample = _vectors(
        vision, rows[np.random.default_rng(0).choice(len(rows), min(100, len(rows)), replace=False)]
    )
    p50, p99 = single_query_latency(
        searcher_for(index, old, vault_fetch(vision, ids, rows)), sample
    )
    meta = {
        **old,
        **meta_common,
        "vectors": live,
        "retired_vectors": len(departed),
        "p50_ms": p50,
        "p99_ms": p99,
        "added_since_build": int(old.get("added_since_build", 0)) + added,
        "removed_since_build": int(old.get("removed_since_build", 0)) + removed,
        "last_action": "add" if added or removed else "lookup",
    }
    version = store.publish(index, lookup, meta)
    changes = [
        f"{added:,} new embeddings added" if added else "",
        f"{removed:,} vectors of images no longer in the library removed" if removed else "",
        f"{len(departed):,} vectors of departed images left unanswered until a rebuild"
        if len(departed)
        else "",
    ]
    if added or removed:
        action, why = (
            ("added" if added else "removed"),
            "; ".join(c for c in changes if c) + " (no rebuild)",
        )
    else:
        action = "refreshed"
        why = (
            "no new embeddings; the lookup (paths, prompts, conditioning rows) changed"
            if old.get("lookup_digest") != digest
            else "published again with the digests of its files"
        )
    return IndexReport(
        action,
        why,
        version.number,
        live,
        added,
        time.perf_counter() - started,
        version.meta(),
        removed,
    )


def update_index(
    home: LunaHome,
    profile: ModelProfile,
    settings: IndexSettings = IndexSettings(),
    rebuild: bool = False,
) -> IndexReport:
    """Add the library's new image embeddings to the current index, or build one from scratch when
    asked, when there is none, or when the library outgrew the current index type. The lookup beside
    the index is republished whenever what it holds changed (a moved file, prompts encoded
    later)."""
    started = time.perf_counter()
    table = _library_rows(home)
    if table.num_rows == 0 or not store_exists(home.vision_store(profile)):
        raise NotBuiltError("no image embeddings to index yet: materialize vision_embeddings first")
    vision = open_vision_store(home, profile)
    dims = vision.fields["embeds"][0]
    ids = table.column("image_id").to_numpy().astype(np.int64)
    rows = table.column("vision_row").to_numpy().astype(np.int64)
    lookup = table.select(list(LOOKUP_COLUMNS))
    digest = lookup_digest(lookup)
    store = index_store(home, profile)
    current = store.current()
    plan = plan_index(len(ids), dims, settings)
    meta_common = {
        "vision_key": profile.vision_key,
        "vision_model": profile.vision_model,
        "text_key": profile.text_key,
        "text_store": home.store_label(home.text_store(profile)),
        "dims": dims,
        "lookup_digest": digest,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    reason = "rebuild requested" if rebuild else "no index yet"
    loaded = None
    if current is not None and not rebuild:
        try:
            loaded = load_index(store)
        except CorruptStoreError as exc:
            reason = f"the current version is damaged ({exc}): rebuilt"
            log.warning(reason)
    if loaded is not None:
        old = loaded.meta
        if (old.get("vision_key"), old.get("text_key"), old.get("dims")) != (
            profile.vision_key,
            profile.text_key,
            dims,
        ):
            reason = "the vision model or the text encoders changed"
        elif old.get("plan", {}).get("kind") != plan.kind:
            reason = (
                f"the library outgrew a {old.get('plan', {}).get('kind')} index "
                f"({len(ids):,} vectors: {plan.kind})"
            )
        else:
            # The ids in the index itself (not the lookup): an image that went missing and came back
            # is still indexed and must not be added twice.
            indexed = faiss.vector_to_array(loaded.index.id_map)
            new_mask = ~np.isin(ids, indexed)
            departed = indexed[~np.isin(indexed, ids)]  # images that left the library
            removed = 0
            if len(departed) and plan.kind == "flat":
                removed = int(
                    loaded.index.remove_ids(faiss.IDSelectorBatch(departed.astype(np.int64)))
                )
                departed = departed[:0]
            share = len(departed) / max(1, len(indexed))
            if share > settings.max_retired_share:
                reason = (
                    f"{len(departed):,} vectors of images no longer in the library ({share:.0%} "
                    "of the index, "
                    f"past {settings.max_retired_share:.0%}): rebuilt without them"
                )
            else:
                return _update_in_place(
                    store,
                    loaded,
                    vision,
                    IndexDelta(rows, ids, new_mask, departed, removed),
                    lookup,
                    digest,
                    meta_common,
                    started,
                )

    vectors = _vectors(vision, rows)
    index, stats = build_index(
        vectors, ids, settings, log=log.info, fetch=vault_fetch(vision, ids, rows)
    )
    meta = {
        **meta_common,
        "vectors": int(index.ntotal),
        "plan": stats.plan,
        "recall_at_10": stats.recall_at_10,
        "recall_by_nprobe": stats.recall_by_nprobe,
        "held_out_queries": stats.queries,
        "p50_ms": stats.p50_ms,
        "p99_ms": stats.p99_ms,
        "build_seconds": stats.build_seconds,
        "search_params": stats.search,
        "target_recall": settings.target_recall,
        "memory_budget_bytes": settings.memory_budget_bytes,
        "added_since_build": 0,
        "last_action": "build",
    }
    version = store.publish(index, lookup, meta)
    meta = version.meta()
    return IndexReport(
        "built",
        reason,
        version.number,
        int(index.ntotal),
        int(index.ntotal),
        time.perf_counter() - started,
        meta,
    )
