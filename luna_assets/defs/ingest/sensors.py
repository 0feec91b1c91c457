"""The sensor that notices when the library roots change (path, size and mtime only)."""

import dagster as dg

from luna_assets.defs.ingest.assets import INGESTED_IMAGES
from luna_assets.resources import LunaHomeResource
from luna_core.ingest.scan import fingerprint_roots


@dg.sensor(
    name="library_files_changed",
    target=[INGESTED_IMAGES],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests `ingested_images` when a file under a library root appears, changes or "
    "disappears "
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
    if digest == luna.luna_home.recorded_library_fingerprint(roots):
        # A built home's first tick (a fresh cursor): the last ingest already saw exactly these
        # files.
        return dg.SkipReason(
            f"the catalog already matches the {count:,} entries under {len(roots)} root(s)"
        )
    # No run_key: the cursor already dedupes, and a library that returns to an earlier state must
    # still be re-scanned.
    return dg.RunRequest(tags={"luna/trigger": "library_files_changed", "luna/entries": str(count)})
