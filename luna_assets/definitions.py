"""Luna's Definitions for one home: every domain's definitions merged, one build-everything job, the
automation sensor, the dead-run monitor, the resources and the executor (Celery when a broker is
set).

The code location (`dagster_project.definitions`) loads them for $LUNA_HOME; `luna demo` builds
them for its own home with `build_definitions(home)`.
"""

from __future__ import annotations

import dagster as dg

from luna_assets.defs.catalog import definitions as catalog
from luna_assets.defs.index import definitions as index
from luna_assets.defs.ingest import definitions as ingest
from luna_assets.defs.projector import definitions as projector
from luna_assets.defs.refine import definitions as refine
from luna_assets.defs.reports import definitions as reports
from luna_assets.defs.vault import definitions as vault
from luna_assets.executor import celery_broker, celery_executor_for
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_assets.runs import dead_run_monitor
from luna_core.home.home import LunaHome

BUILD_ALL_JOB = "luna_build_all"
DOMAINS = (ingest, vault, catalog, index, projector, refine, reports)

# Declarative Automation needs a sensor to evaluate conditions; Dagster's implicit one starts
# stopped. This one is on by default, so the vault follows every ingest without a click.
luna_automation = dg.AutomationConditionSensorDefinition(
    "luna_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: the vault, catalog, index and "
    "report follow changed "
    "data; the projector trains when missing and weekly (and on the retrain policy's request).",
)


def build_definitions(
    home: str | None = None, models: LunaModelsResource | None = None
) -> dg.Definitions:
    """Luna's Definitions for a home; `models` defaults to the home's recorded profile
    (luna.toml)."""
    luna_home = LunaHome.resolve(home)
    luna = LunaHomeResource(home=str(luna_home.root))
    broker = celery_broker(luna_home)
    assembly = dg.Definitions(
        jobs=[
            dg.define_asset_job(
                BUILD_ALL_JOB,
                selection=dg.AssetSelection.all(),
                description="Every Luna asset, in dependency order (what `luna demo` runs).",
            )
        ],
        sensors=[luna_automation, dead_run_monitor],
        resources={"luna": luna, "models": models or LunaModelsResource()},
        # With a broker, every run's steps go to `luna worker` processes (any machine sharing the
        # home).
        executor=celery_executor_for(broker) if broker else None,
    )
    return dg.Definitions.merge(*(domain.definitions(luna_home) for domain in DOMAINS), assembly)
