"""The index's rebuild job and its nightly schedule."""

import dagster as dg

from luna_assets.automation import cron_setting
from luna_assets.defs.index.assets import faiss_index
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS_BY_NAME

REBUILD_INDEX_JOB = "rebuild_faiss_index"
REINDEX_SCHEDULE = "nightly_reindex"
REINDEX_CRON = "schedules.reindex_cron"  # default nightly, 03:00


def rebuild_job_and_schedule(home: LunaHome | None):
    """The job that rebuilds the index from scratch, and the schedule that runs it nightly."""
    rebuild_job = dg.define_asset_job(
        REBUILD_INDEX_JOB,
        selection=[faiss_index],
        config={"ops": {"faiss_index": {"config": {"rebuild": True}}}},
        description="Rebuild and retrain the FAISS index from every embedding (also launchable "
        "from the UI).",
    )
    cron, problem = cron_setting(home, REINDEX_CRON)
    nightly = dg.ScheduleDefinition(
        name=REINDEX_SCHEDULE,
        job=rebuild_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Rebuild and retrain the FAISS index (cron: "
        f"{KEYS_BY_NAME[REINDEX_CRON].place}). {problem}".strip(),
    )
    return rebuild_job, nightly
