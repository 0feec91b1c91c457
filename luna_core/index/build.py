"""Keep the index in step with the vault: add new embeddings, or rebuild and retrain."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from luna_core.catalog import open_catalog
from luna_core.errors import LunaConfigError
from luna_core.index.faiss_index import IndexSettings, build_index, plan_index, search_params, single_query_latency
from luna_core.index.store import IndexStore, load_index
from luna_core.models.profiles import ModelProfile
from luna_core.vault.embed import TEXT, VISION, store_path
from luna_core.vault.store import VISION_LAYOUT, RowStore

log = logging.getLogger(__name__)

LOOKUP_COLUMNS = ("image_id", "content_hash", "path", "generator", "split", "prompt", "negative_prompt",
                  "prompt_row", "negative_row")


@dataclass
class IndexReport:
    action: str  # built | added | unchanged
    reason: str
    version: int
    vectors: int
    added: int = 0
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)


def index_dir(home_root: Path, profile: ModelProfile) -> Path:
    return Path(home_root) / "index" / profile.vision_key


def _library_rows(catalog_path: Path):
    with open_catalog(catalog_path) as con:
        if not con.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'library'").fetchall()[0][0]:
            raise LunaConfigError("the catalog has no `library` view yet: materialize luna_catalog first")
        table = con.sql(f"""
            SELECT {", ".join(c for c in LOOKUP_COLUMNS if not c.endswith("_row"))},
                   coalesce(prompt_row, -1) AS prompt_row, coalesce(negative_row, -1) AS negative_row,
                   vision_row
            FROM library WHERE vision_row IS NOT NULL ORDER BY image_id""").to_arrow_table()
    return table


def _vectors(vision: RowStore, rows: np.ndarray) -> np.ndarray:
    out = np.empty((len(rows), vision.fields["embeds"][0]), dtype=np.float32)
    for start in range(0, len(rows), 65536):  # bounded reads: fp16 → fp32 a slice at a time
        out[start : start + 65536] = vision.read("embeds", rows[start : start + 65536])
    return out


def update_index(catalog_path: str | Path, home_root: str | Path, profile: ModelProfile,
                 settings: IndexSettings = IndexSettings(), rebuild: bool = False) -> IndexReport:
    """Add the library's new image embeddings to the current index, or build one from scratch when
    asked, when there is none, or when the library outgrew the current index type."""
    started = time.perf_counter()
    catalog_path, home_root = Path(catalog_path), Path(home_root)
    table = _library_rows(catalog_path)
    vault_dir = home_root / "vault"
    vision_path = store_path(vault_dir, VISION, profile.vision_key)
    if table.num_rows == 0 or not vision_path.exists():
        raise LunaConfigError("no image embeddings to index yet: materialize vision_embeddings first")
    import zarr

    group = zarr.open_group(str(vision_path), mode="r")
    vision = RowStore(vision_path, group, {"embeds": tuple(group["embeds"].shape[1:])}, VISION_LAYOUT)
    dims = vision.fields["embeds"][0]
    ids = table.column("image_id").to_numpy().astype(np.int64)
    rows = table.column("vision_row").to_numpy().astype(np.int64)
    lookup = table.select(list(LOOKUP_COLUMNS))
    store = IndexStore(index_dir(home_root, profile))
    current = store.current()
    plan = plan_index(len(ids), dims, settings)
    meta_common = {
        "vision_key": profile.vision_key, "vision_model": profile.vision_model, "text_key": profile.text_key,
        "text_store": str(store_path(vault_dir, TEXT, profile.text_key)), "dims": dims,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    reason = "rebuild requested" if rebuild else "no index yet"
    if current is not None and not rebuild:
        loaded = load_index(store)
        old = loaded.meta
        if old.get("vision_key") != profile.vision_key or old.get("dims") != dims:
            reason = "the vision model changed"
        elif old.get("plan", {}).get("kind") != plan.kind:
            reason = f"the library outgrew a {old.get('plan', {}).get('kind')} index ({len(ids):,} vectors: {plan.kind})"
        else:
            import faiss

            # The ids in the index itself (not the lookup): an image that went missing and came back
            # is still indexed and must not be added twice.
            indexed = faiss.vector_to_array(loaded.index.id_map)
            new_mask = ~np.isin(ids, indexed)
            added = int(new_mask.sum())
            if added == 0 and loaded.lookup.num_rows == lookup.num_rows:
                return IndexReport("unchanged", "no new embeddings", current.number, int(loaded.index.ntotal),
                                   seconds=time.perf_counter() - started, meta=old)
            index = loaded.index
            if added:
                index.add_with_ids(_vectors(vision, rows[new_mask]), ids[new_mask])
            sample = _vectors(vision, rows[np.random.default_rng(0).choice(len(rows), min(100, len(rows)), replace=False)])
            p50, p99 = single_query_latency(index, sample)
            meta = {**old, **meta_common, "vectors": int(index.ntotal), "p50_ms": p50, "p99_ms": p99,
                    "added_since_build": int(old.get("added_since_build", 0)) + added, "last_action": "add"}
            version = store.publish(index, lookup, meta)
            meta = version.meta()
            return IndexReport("added", f"{added:,} new embeddings added without a rebuild", version.number,
                               int(index.ntotal), added, time.perf_counter() - started, meta)

    vectors = _vectors(vision, rows)
    index, stats = build_index(vectors, ids, settings, log=log.info)
    meta = {**meta_common, "vectors": int(index.ntotal), "plan": stats.plan, "recall_at_10": stats.recall_at_10,
            "recall_by_nprobe": stats.recall_by_nprobe, "held_out_queries": stats.queries,
            "p50_ms": stats.p50_ms, "p99_ms": stats.p99_ms, "build_seconds": stats.build_seconds,
            "search_params": search_params(index), "target_recall": settings.target_recall,
            "memory_budget_bytes": settings.memory_budget_bytes, "added_since_build": 0, "last_action": "build"}
    version = store.publish(index, lookup, meta)
    meta = version.meta()
    return IndexReport("built", reason, version.number, int(index.ntotal), int(index.ntotal),
                       time.perf_counter() - started, meta)
