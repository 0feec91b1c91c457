"""The benchmark's job and its weekly schedule."""

import dagster as dg

from luna_assets.automation import cron_setting
from luna_assets.defs.reports.assets import refinement_benchmark
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS_BY_NAME

BENCHMARK_JOB = "run_refinement_benchmark"
BENCHMARK_SCHEDULE = "weekly_benchmark"
# default weekly, Sunday 05:00 (after the projector's weekly retrain)
BENCHMARK_CRON = "schedules.benchmark_cron"


def benchmark_job_and_schedule(home: LunaHome | None):
    """The benchmark job, and the schedule that runs it weekly."""
    benchmark_job = dg.define_asset_job(
        BENCHMARK_JOB,
        selection=[refinement_benchmark],
        description="Regeneration sample, costs and batching (minutes); the report then shows "
        "them. Launch it from "
        "the UI when you want fresh figures before the weekly run.",
    )
    cron, problem = cron_setting(home, BENCHMARK_CRON)
    weekly = dg.ScheduleDefinition(
        name=BENCHMARK_SCHEDULE,
        job=benchmark_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Run the refinement benchmark (cron: {KEYS_BY_NAME[BENCHMARK_CRON].place}). "
        f"{problem}".strip(),
    )
    return benchmark_job, weekly
