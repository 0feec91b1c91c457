"""The `index` domain (group `index`): the versioned FAISS index over the image embeddings."""

import dagster as dg

from luna_assets.automation import on_upstream_change
from luna_assets.defs.catalog.assets import LUNA_CATALOG
from luna_assets.metadata import seconds
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.index.build import update_index
from luna_core.index.faiss_index import GIB, IndexSettings

FAISS_INDEX = dg.AssetKey("faiss_index")


class FaissIndexConfig(dg.Config):
    """Launchpad settings of the index build."""

    rebuild: bool = False  # retrain and rebuild from scratch instead of adding new embeddings
    memory_budget_gb: float = IndexSettings.memory_budget_bytes / GIB
    flat_max_vectors: int = IndexSettings.flat_max_vectors
    target_recall: float = IndexSettings.target_recall


@dg.asset(
    key=FAISS_INDEX,
    deps=[LUNA_CATALOG],
    group_name="index",
    kinds={"faiss"},
    code_version="2",
    automation_condition=on_upstream_change(),
)
def faiss_index(
    context: dg.AssetExecutionContext,
    config: FaissIndexConfig,
    luna: LunaHomeResource,
    models: LunaModelsResource,
) -> dg.MaterializeResult:
    """A versioned FAISS inner-product index over the image embeddings (ids = catalog image ids),
    with the lookup queries need, swapped in atomically."""
    profile = models.resolve(luna.luna_home)
    settings = IndexSettings(
        memory_budget_bytes=int(config.memory_budget_gb * GIB),
        flat_max_vectors=config.flat_max_vectors,
        target_recall=config.target_recall,
    )
    report = update_index(luna.luna_home, profile, settings, rebuild=config.rebuild)
    context.log.info(f"index {report.action}: {report.reason}")
    meta = report.meta
    return dg.MaterializeResult(
        metadata={
            "action": report.action,
            "reason": report.reason,
            "version": report.version,
            "vectors": report.vectors,
            "added": report.added,
            "removed": report.removed,
            "departed images left unanswered until a rebuild": int(meta.get("retired_vectors", 0)),
            "index": meta.get("plan", {}).get("factory", ""),
            "recall@10 (held-out, vs exact)": dg.MetadataValue.float(
                round(float(meta.get("recall_at_10", 0.0)), 4)
            ),
            "search params": dg.MetadataValue.json(meta.get("search_params", {})),
            "query p50 (ms, 1 query)": dg.MetadataValue.float(
                round(float(meta.get("p50_ms", 0.0)), 3)
            ),
            "query p99 (ms, 1 query)": dg.MetadataValue.float(
                round(float(meta.get("p99_ms", 0.0)), 3)
            ),
            "build seconds": seconds(meta.get("build_seconds", 0.0)),
            "MB on disk (index + lookup)": dg.MetadataValue.float(
                round((meta.get("index_bytes", 0) + meta.get("lookup_bytes", 0)) / 1e6, 2)
            ),
            "estimated memory MB": dg.MetadataValue.float(
                round(meta.get("plan", {}).get("estimated_bytes", 0) / 1e6, 2)
            ),
            "duration (s)": seconds(report.seconds),
            "vision model": meta.get("vision_key", ""),
        },
        # A new version only when something was published: an unchanged index requests nothing
        # downstream.
        data_version=dg.DataVersion(
            f"{meta.get('vision_key', '')}__{meta.get('text_key', '')} v{report.version}"
        ),
    )
