"""The Luna code location: every domain's Definitions, one build-everything job, the automation
sensor, and the resources, bound to one Luna home.

`dagster dev` loads `defs` (the home from $LUNA_HOME, else ./luna_home); `luna demo` builds the
same Definitions for its own home with `build_definitions(home)`.
"""

from __future__ import annotations

import dagster as dg

from dagster_project.celery import celery_broker, celery_executor_for
from dagster_project.runs import dead_run_monitor
from luna_assets import DOMAINS
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.settings import LunaHome

BUILD_ALL_JOB = "luna_build_all"

# Declarative Automation needs a sensor to evaluate conditions; Dagster's implicit one starts
# stopped. This one is on by default, so the vault follows every ingest without a click.
luna_automation = dg.AutomationConditionSensorDefinition(
    "luna_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: the vault, catalog, index and report follow changed "
                "data; the projector trains when missing and weekly (and on the retrain policy's request).",
)


def build_definitions(home: str | None = None, models: LunaModelsResource | None = None) -> dg.Definitions:
    """Luna's Definitions for a home; `models` defaults to the home's recorded profile (luna.toml)."""
    luna_home = LunaHome.resolve(home)
    luna = LunaHomeResource(home=str(luna_home.root))
    broker = celery_broker(luna_home)
    assembly = dg.Definitions(
        jobs=[dg.define_asset_job(BUILD_ALL_JOB, selection=dg.AssetSelection.all(),
                                  description="Every Luna asset, in dependency order (what `luna demo` runs).")],
        sensors=[luna_automation, dead_run_monitor],
        resources={"luna": luna, "models": models or LunaModelsResource()},
        # With a broker, every run's steps go to `luna worker` processes (any machine sharing the home).
        executor=celery_executor_for(broker) if broker else None,
    )
    return dg.Definitions.merge(*(domain.definitions(luna_home) for domain in DOMAINS), assembly)


defs = build_definitions()


def luna_build_all_job() -> dg.JobDefinition:
    """The build-everything job of the environment's home, reconstructable in other processes (for
    `dg.execute_job` with the default multiprocess executor)."""
    return defs.resolve_job_def(BUILD_ALL_JOB)
