"""The `ingest` domain (group `ingest`): every file under the library roots, in the DuckDB catalog,
the job that scans them and the sensor that notices when they change."""

import dagster as dg

from luna_assets.defs.ingest.assets import ingested_images
from luna_assets.defs.ingest.sensors import library_files_changed
from luna_core.home.home import LunaHome

INGEST_JOB = "ingest_library"


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    return dg.Definitions(
        assets=[ingested_images],
        jobs=[
            dg.define_asset_job(
                INGEST_JOB,
                selection=[ingested_images],
                description="Scan the library roots into the catalog.",
            )
        ],
        sensors=[library_files_changed],
    )
