"""Sensors: notice new or changed files under the library roots by stat calls alone."""


import dagster as dg

from dagster_project.resources import LunaHomeResource
from luna_assets.ingest import INGESTED_IMAGES
from luna_core.scan import fingerprint_roots


@dg.sensor(
    name="library_files_changed",
    target=[INGESTED_IMAGES],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests `ingested_images` when a file under a library root appears, changes or disappears "
    "(path, size and mtime only; no file is opened).",
)
def library_files_changed(context: dg.SensorEvaluationContext, luna: LunaHomeResource):
    roots = luna.library_roots()
    if not roots:
        return dg.SkipReason("no library roots configured; add one with `luna ingest ROOT`")
    count, digest = fingerprint_roots(roots)
    if digest == context.cursor:
        return dg.SkipReason(f"no change in {count:,} entries under {len(roots)} root(s)")
    context.update_cursor(digest)
    # No run_key: the cursor already dedupes, and a library that returns to an earlier state must still be re-scanned.
    return dg.RunRequest(tags={"luna/trigger": "library_files_changed", "luna/entries": str(count)})


# Declarative Automation needs a sensor to evaluate conditions; Dagster's implicit one starts
# stopped. This one is on by default, so embeddings follow every ingest without a click.
luna_automation = dg.AutomationConditionSensorDefinition(
    "luna_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions: the vault follows the catalog by itself.",
)
