"""The `ingest` domain: every file under the library roots, in the DuckDB catalog, and the sensor
that notices when the roots change."""

import dagster as dg

from luna_assets.metadata import md_table, progress_logger, seconds
from luna_assets.resources import LunaHomeResource
from luna_core.catalog import connection as catalog
from luna_core.ingest.run import ingest
from luna_core.ingest.scan import fingerprint_roots

INGESTED_IMAGES = dg.AssetKey("ingested_images")
CHECK_CONTENT_HASH = "every_image_has_content_hash"
CHECK_QUARANTINE_REASON = "every_quarantined_file_has_reason"


@dg.asset(
    key=INGESTED_IMAGES,
    group_name="ingest",
    kinds={"duckdb", "python"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_CONTENT_HASH,
            asset=INGESTED_IMAGES,
            description="Every image row carries a SHA-256 content hash.",
        ),
        dg.AssetCheckSpec(
            CHECK_QUARANTINE_REASON,
            asset=INGESTED_IMAGES,
            description="Every quarantined file has a reason and a detail a person can read.",
        ),
    ],
)
def ingested_images(
    context: dg.AssetExecutionContext, luna: LunaHomeResource
) -> dg.MaterializeResult:
    """Every file under the library roots: an image row (content hash, size, generation metadata)
    or a quarantine row with its reason."""
    roots = luna.library_roots()
    if not roots:
        raise dg.Failure(
            f"No library roots are configured for the Luna home {luna.luna_home.root}. "
            "Add one with `luna ingest ROOT --home ...` (it records the root) or set extra_roots "
            "on the resource."
        )
    context.log.info(f"Ingesting {len(roots)} root(s) into {luna.luna_home.catalog_path}: {roots}")
    # Taken before the scan: a file changed while ingest runs makes the next sensor tick differ (and
    # run).
    _, fingerprint = fingerprint_roots(roots)
    report = ingest(
        luna.luna_home.catalog_path,
        roots,
        luna.ingest_options(),
        on_progress=progress_logger(context, "new or changed files read"),
    )
    if not report.unavailable_roots:
        luna.luna_home.record_library_fingerprint(roots, fingerprint)
    for root in report.unavailable_roots:
        context.log.warning(
            f"Library root {root} is not available (unmounted?); its catalog rows were left as "
            "they were"
        )
    with catalog.open_catalog(luna.luna_home.catalog_path) as con:
        unhashed = catalog.rows_without_content_hash(con)
        unexplained = catalog.quarantined_without_reason(con)
        samples = catalog.sample_images(con, 12)
        quarantined = catalog.quarantine_rows(con, 25)
        totals = catalog.image_counts(con)
        held = catalog.library_files_digest(con)
    by_generator = [{"generator": g, "images": n} for g, n in report.by_generator.items()]
    files_per_s = report.files_read / report.seconds if report.seconds else 0.0
    return dg.MaterializeResult(
        # The same files give the same version: a run that found nothing new requests nothing
        # downstream.
        data_version=dg.DataVersion(held),
        metadata={
            "new": report.new,
            "prompt syntax changed (a setting; their prompts re-encode)": report.syntax_changed,
            "changed": report.changed,
            "unchanged": report.unchanged,
            "missing": report.missing,
            "moved": report.moved,
            "quarantined (this run)": report.quarantined,
            "quarantined (total)": report.quarantined_total,
            "ignored by pattern": report.ignored,
            "images in catalog": dg.MetadataValue.int(int(totals.get("ok", 0))),
            "files read": report.files_read,
            "MB read": dg.MetadataValue.float(round(report.bytes_read / 1e6, 2)),
            "duration (s)": seconds(report.seconds),
            "files/s": dg.MetadataValue.float(round(files_per_s, 1)),
            "by generator": md_table(by_generator, ["generator", "images"]),
            "quarantine": md_table(quarantined, ["path", "reason", "detail"]),
            "sample rows": md_table(
                samples, ["generator", "format", "size", "seed", "prompt", "path"]
            ),
            "catalog": dg.MetadataValue.path(str(luna.luna_home.catalog_path)),
            "roots": dg.MetadataValue.json(roots),
            "unavailable roots": dg.MetadataValue.json(report.unavailable_roots),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=CHECK_CONTENT_HASH,
                passed=not unhashed,
                metadata={
                    "rows without hash": len(unhashed),
                    "examples": dg.MetadataValue.json(unhashed),
                },
            ),
            dg.AssetCheckResult(
                check_name=CHECK_QUARANTINE_REASON,
                passed=not unexplained,
                metadata={
                    "rows without reason": len(unexplained),
                    "examples": dg.MetadataValue.json(unexplained),
                },
            ),
        ],
    )
