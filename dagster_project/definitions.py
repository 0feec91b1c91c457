"""The Luna code location: assets, checks, jobs, sensors and resources, bound to one Luna home.

`dagster dev` loads `defs` (the home from $LUNA_HOME, else ./luna_home); `luna demo` builds the
same Definitions for its own home with `build_definitions(home)`.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.resources import LunaHomeResource, LunaModelsResource
from dagster_project.sensors import library_files_changed, luna_automation
import os

from luna_assets import ALL_ASSETS, faiss_index, ingested_images
from luna_core.settings import LunaHome

BUILD_ALL_JOB = "luna_build_all"
INGEST_JOB = "ingest_library"
REBUILD_INDEX_JOB = "rebuild_faiss_index"
REINDEX_CRON_ENV = "LUNA_REINDEX_CRON"
DEFAULT_REINDEX_CRON = "0 3 * * *"  # nightly, 03:00


def build_definitions(home: str | None = None, models: LunaModelsResource | None = None) -> dg.Definitions:
    """Luna's Definitions for a home; `models` defaults to the home's recorded profile (luna.toml)."""
    luna = LunaHomeResource(home=str(LunaHome.resolve(home).root))
    rebuild_job = dg.define_asset_job(
        REBUILD_INDEX_JOB, selection=[faiss_index],
        config={"ops": {"faiss_index": {"config": {"rebuild": True}}}},
        description="Rebuild and retrain the FAISS index from every embedding (also launchable from the UI).",
    )
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[
            dg.define_asset_job(BUILD_ALL_JOB, selection=dg.AssetSelection.all(),
                                description="Every Luna asset, in dependency order (what `luna demo` runs)."),
            dg.define_asset_job(INGEST_JOB, selection=[ingested_images],
                                description="Scan the library roots into the catalog."),
            rebuild_job,
        ],
        schedules=[dg.ScheduleDefinition(
            name="nightly_reindex", job=rebuild_job, cron_schedule=os.environ.get(REINDEX_CRON_ENV, DEFAULT_REINDEX_CRON),
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Rebuild and retrain the FAISS index (cron from ${REINDEX_CRON_ENV}).",
        )],
        sensors=[library_files_changed, luna_automation],
        resources={"luna": luna, "models": models or LunaModelsResource()},
    )


defs = build_definitions()


def luna_build_all_job() -> dg.JobDefinition:
    """The build-everything job of the environment's home, reconstructable in other processes (for
    `dg.execute_job` with the default multiprocess executor)."""
    return defs.resolve_job_def(BUILD_ALL_JOB)
