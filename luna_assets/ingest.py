"""The `ingest` group: every file under the library roots, in the DuckDB catalog."""


import dagster as dg

from dagster_project.resources import LunaHomeResource
from luna_core import catalog
from luna_core.ingest import ingest

INGESTED_IMAGES = dg.AssetKey("ingested_images")
CHECK_CONTENT_HASH = "every_image_has_content_hash"
CHECK_QUARANTINE_REASON = "every_quarantined_file_has_reason"


def _md_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value) -> str:
        return str("" if value is None else value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


@dg.asset(
    key=INGESTED_IMAGES,
    group_name="ingest",
    kinds={"duckdb", "python"},
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(CHECK_CONTENT_HASH, asset=INGESTED_IMAGES,
                          description="Every image row carries a SHA-256 content hash."),
        dg.AssetCheckSpec(CHECK_QUARANTINE_REASON, asset=INGESTED_IMAGES,
                          description="Every quarantined file has a reason and a detail a person can read."),
    ],
)
def ingested_images(context: dg.AssetExecutionContext, luna: LunaHomeResource) -> dg.MaterializeResult:
    """Every file under the library roots: an image row (content hash, size, generation metadata) or a quarantine row with its reason."""
    roots = luna.library_roots()
    if not roots:
        raise dg.Failure(
            f"No library roots are configured for the Luna home {luna.luna_home.root}. "
            "Add one with `luna ingest ROOT --home ...` (it records the root) or set extra_roots on the resource."
        )
    context.log.info(f"Ingesting {len(roots)} root(s) into {luna.luna_home.catalog_path}: {roots}")
    next_log = [0.0]

    def log_progress(done: int, total: int) -> None:
        if done / total >= next_log[0] or done == total:
            context.log.info(f"{done:,}/{total:,} new or changed files read")
            next_log[0] = done / total + 0.1

    report = ingest(luna.luna_home.catalog_path, roots, luna.ingest_options(), on_progress=log_progress)
    for root in report.unavailable_roots:
        context.log.warning(f"Library root {root} is not available (unmounted?); its catalog rows were left as they were")
    with catalog.open_catalog(luna.luna_home.catalog_path) as con:
        unhashed = catalog.rows_without_content_hash(con)
        unexplained = catalog.quarantined_without_reason(con)
        samples = catalog.sample_images(con, 12)
        quarantined = catalog.quarantine_rows(con, 25)
        totals = dict(con.execute("SELECT status, count(*) FROM images GROUP BY 1").fetchall())
    by_generator = [{"generator": g, "images": n} for g, n in report.by_generator.items()]
    files_per_s = report.files_read / report.seconds if report.seconds else 0.0
    return dg.MaterializeResult(
        metadata={
            "new": report.new,
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
            "duration (s)": dg.MetadataValue.float(round(report.seconds, 2)),
            "files/s": dg.MetadataValue.float(round(files_per_s, 1)),
            "by generator": dg.MetadataValue.md(_md_table(by_generator, ["generator", "images"])),
            "quarantine": dg.MetadataValue.md(_md_table(quarantined, ["path", "reason", "detail"])),
            "sample rows": dg.MetadataValue.md(_md_table(samples, ["generator", "format", "size", "seed", "prompt", "path"])),
            "catalog": dg.MetadataValue.path(str(luna.luna_home.catalog_path)),
            "roots": dg.MetadataValue.json(roots),
            "unavailable roots": dg.MetadataValue.json(report.unavailable_roots),
        },
        check_results=[
            dg.AssetCheckResult(check_name=CHECK_CONTENT_HASH, passed=not unhashed,
                                metadata={"rows without hash": len(unhashed), "examples": dg.MetadataValue.json(unhashed)}),
            dg.AssetCheckResult(check_name=CHECK_QUARANTINE_REASON, passed=not unexplained,
                                metadata={"rows without reason": len(unexplained), "examples": dg.MetadataValue.json(unexplained)}),
        ],
    )
