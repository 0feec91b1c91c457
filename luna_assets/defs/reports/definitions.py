"""The `reports` domain (group `reports`): the refinement report (cheap, follows the index and the
champion) and the refinement benchmark (expensive, weekly and on demand)."""

import dagster as dg

from luna_assets.defs.reports.assets import refinement_benchmark, refinement_report
from luna_assets.defs.reports.schedules import benchmark_job_and_schedule
from luna_core.home.home import LunaHome


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    benchmark_job, weekly = benchmark_job_and_schedule(home)
    return dg.Definitions(
        assets=[refinement_benchmark, refinement_report], jobs=[benchmark_job], schedules=[weekly]
    )
