"""The `index` domain (groups `catalog` and `index`): the library view over catalog and vault, the
FAISS index, and the job and schedule that rebuild it."""

import dagster as dg

from luna_assets.automation import cron_setting, on_upstream_change
from luna_assets.metadata import seconds
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_assets.vault import TEXT_CONDITIONINGS, VISION_EMBEDDINGS
from luna_core.index.build import update_index
from luna_core.index.faiss_index import GIB, IndexSettings
from luna_core.library import build_library
from luna_core.settings import LunaHome
from luna_core.vault.commits import commit_segments

LUNA_CATALOG = dg.AssetKey("luna_catalog")
FAISS_INDEX = dg.AssetKey("faiss_index")
REBUILD_INDEX_JOB = "rebuild_faiss_index"
REINDEX_SCHEDULE = "nightly_reindex"
REINDEX_CRON_ENV = "LUNA_REINDEX_CRON"
DEFAULT_REINDEX_CRON = "0 3 * * *"  # nightly, 03:00


@dg.asset(
    key=LUNA_CATALOG,
    deps=[VISION_EMBEDDINGS, TEXT_CONDITIONINGS],
    group_name="catalog",
    kinds={"duckdb"},
    code_version="2",
    automation_condition=on_upstream_change(),
    check_specs=[
        dg.AssetCheckSpec("every_image_counted_once", asset=LUNA_CATALOG,
                          description="Every ok image is in the library view exactly once, with an id and a split."),
        dg.AssetCheckSpec("no_orphans", asset=LUNA_CATALOG,
                          description="No vault row or generation points at an image or prompt the catalog no longer has."),
    ],
)
def luna_catalog(context: dg.AssetExecutionContext, luna: LunaHomeResource, models: LunaModelsResource) -> dg.MaterializeResult:
    """The `library` view: one row per image joining generation, vision row and conditioning rows, with a stable image id and a train/val/test split that near-duplicates share."""
    profile = models.resolve(luna.luna_home)
    # Rows that shards embedded apart (segment stores and their manifests) enter the catalog here, in one step.
    segments = commit_segments(luna.luna_home, profile)
    if any(segments.values()):
        context.log.info(f"committed segment rows: {segments}")
    report = build_library(luna.luna_home, profile)
    orphans = sum(report.orphans.values())
    return dg.MaterializeResult(
        metadata={
            "images": report.images, "new ids": report.new_ids,
            "by split": dg.MetadataValue.json(report.by_split),
            "with vision row": report.with_vision_row, "with prompt row": report.with_prompt_row,
            "with negative row": report.with_negative_row,
            "orphans": dg.MetadataValue.json(report.orphans),
            "retired (left the library)": dg.MetadataValue.json(report.retired),
            "segment rows committed": dg.MetadataValue.json(segments),
            "new images' splits": dg.MetadataValue.json(report.splits.assigned),
            "near-duplicate links found": dg.MetadataValue.json(
                {**report.splits.links, "images compared": report.splits.scanned,
                 "cosine threshold": report.splits.threshold}),
        },
        data_version=dg.DataVersion(report.digest),
        check_results=[
            dg.AssetCheckResult(check_name="every_image_counted_once", passed=report.uncounted == 0,
                                metadata={"images": report.images, "uncounted or doubled": report.uncounted}),
            # Leftovers the retirement above missed (harmless to answers): a warning.
            dg.AssetCheckResult(check_name="no_orphans", passed=orphans == 0, severity=dg.AssetCheckSeverity.WARN,
                                metadata={k: v for k, v in report.orphans.items()}),
        ],
    )


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
def faiss_index(context: dg.AssetExecutionContext, config: FaissIndexConfig, luna: LunaHomeResource,
                models: LunaModelsResource) -> dg.MaterializeResult:
    """A versioned FAISS inner-product index over the image embeddings (ids = catalog image ids), with the lookup queries need, swapped in atomically."""
    profile = models.resolve(luna.luna_home)
    settings = IndexSettings(memory_budget_bytes=int(config.memory_budget_gb * GIB),
                             flat_max_vectors=config.flat_max_vectors, target_recall=config.target_recall)
    report = update_index(luna.luna_home, profile, settings, rebuild=config.rebuild)
    context.log.info(f"index {report.action}: {report.reason}")
    meta = report.meta
    return dg.MaterializeResult(
        metadata={
            "action": report.action, "reason": report.reason, "version": report.version,
            "vectors": report.vectors, "added": report.added, "removed": report.removed,
            "departed images left unanswered until a rebuild": int(meta.get("retired_vectors", 0)),
            "index": meta.get("plan", {}).get("factory", ""),
            "recall@10 (held-out, vs exact)": dg.MetadataValue.float(round(float(meta.get("recall_at_10", 0.0)), 4)),
            "search params": dg.MetadataValue.json(meta.get("search_params", {})),
            "query p50 (ms, 1 query)": dg.MetadataValue.float(round(float(meta.get("p50_ms", 0.0)), 3)),
            "query p99 (ms, 1 query)": dg.MetadataValue.float(round(float(meta.get("p99_ms", 0.0)), 3)),
            "build seconds": seconds(meta.get("build_seconds", 0.0)),
            "MB on disk (index + lookup)": dg.MetadataValue.float(
                round((meta.get("index_bytes", 0) + meta.get("lookup_bytes", 0)) / 1e6, 2)),
            "estimated memory MB": dg.MetadataValue.float(round(meta.get("plan", {}).get("estimated_bytes", 0) / 1e6, 2)),
            "duration (s)": seconds(report.seconds),
            "vision model": meta.get("vision_key", ""),
        },
        # A new version only when something was published: an unchanged index requests nothing downstream.
        data_version=dg.DataVersion(f"{meta.get('vision_key', '')}__{meta.get('text_key', '')} v{report.version}"),
    )


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    rebuild_job = dg.define_asset_job(
        REBUILD_INDEX_JOB, selection=[faiss_index],
        config={"ops": {"faiss_index": {"config": {"rebuild": True}}}},
        description="Rebuild and retrain the FAISS index from every embedding (also launchable from the UI).",
    )
    cron, problem = cron_setting(REINDEX_CRON_ENV, DEFAULT_REINDEX_CRON)
    nightly = dg.ScheduleDefinition(
        name=REINDEX_SCHEDULE, job=rebuild_job, cron_schedule=cron, default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Rebuild and retrain the FAISS index (cron from ${REINDEX_CRON_ENV}). {problem}".strip())
    return dg.Definitions(assets=[luna_catalog, faiss_index], jobs=[rebuild_job], schedules=[nightly])
