"""The `index` domain (group `index`): the FAISS index, the job that rebuilds it and its nightly
schedule."""

import dagster as dg

from luna_assets.defs.index.assets import faiss_index
from luna_assets.defs.index.schedules import rebuild_job_and_schedule
from luna_core.home.home import LunaHome


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    rebuild_job, nightly = rebuild_job_and_schedule(home)
    return dg.Definitions(assets=[faiss_index], jobs=[rebuild_job], schedules=[nightly])
