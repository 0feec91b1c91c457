"""The Luna code location: assets, checks, jobs, sensors and resources, bound to one Luna home.

`dagster dev` loads `defs` (the home from $LUNA_HOME, else ./luna_home); `luna demo` builds the
same Definitions for its own home with `build_definitions(home)`.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.resources import LunaHomeResource
from dagster_project.sensors import library_files_changed
from luna_assets import ingested_images
from luna_core.settings import LunaHome

BUILD_ALL_JOB = "luna_build_all"
INGEST_JOB = "ingest_library"


def build_definitions(home: str | None = None) -> dg.Definitions:
    luna = LunaHomeResource(home=str(LunaHome.resolve(home).root))
    return dg.Definitions(
        assets=[ingested_images],
        jobs=[
            dg.define_asset_job(BUILD_ALL_JOB, selection=dg.AssetSelection.all(),
                                description="Every Luna asset, in dependency order (what `luna demo` runs)."),
            dg.define_asset_job(INGEST_JOB, selection=[ingested_images],
                                description="Scan the library roots into the catalog."),
        ],
        sensors=[library_files_changed],
        resources={"luna": luna},
    )


defs = build_definitions()
