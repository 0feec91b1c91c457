"""The Luna code location: assets, checks, jobs, sensors and resources, bound to one Luna home.

`dagster dev` loads `defs` (the home from $LUNA_HOME, else ./luna_home); `luna demo` builds the
same Definitions for its own home with `build_definitions(home)`.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.resources import LunaHomeResource, LunaModelsResource
from dagster_project.sensors import library_files_changed, luna_automation
from luna_assets import ALL_ASSETS, ingested_images
from luna_core.settings import LunaHome

BUILD_ALL_JOB = "luna_build_all"
INGEST_JOB = "ingest_library"


def build_definitions(home: str | None = None, models: LunaModelsResource | None = None) -> dg.Definitions:
    """Luna's Definitions for a home; `models` defaults to the home's recorded profile (luna.toml)."""
    luna = LunaHomeResource(home=str(LunaHome.resolve(home).root))
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[
            dg.define_asset_job(BUILD_ALL_JOB, selection=dg.AssetSelection.all(),
                                description="Every Luna asset, in dependency order (what `luna demo` runs)."),
            dg.define_asset_job(INGEST_JOB, selection=[ingested_images],
                                description="Scan the library roots into the catalog."),
        ],
        sensors=[library_files_changed, luna_automation],
        resources={"luna": luna, "models": models or LunaModelsResource()},
    )


defs = build_definitions()


def luna_build_all_job() -> dg.JobDefinition:
    """The build-everything job of the environment's home, reconstructable in other processes (for
    `dg.execute_job` with the default multiprocess executor)."""
    return defs.resolve_job_def(BUILD_ALL_JOB)
