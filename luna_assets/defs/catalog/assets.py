"""The `catalog` domain: the `library` view over the catalog and the vault, with ids and frozen
splits."""

import dagster as dg

from luna_assets.automation import on_upstream_change
from luna_assets.defs.vault.assets import TEXT_CONDITIONINGS, VISION_EMBEDDINGS
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.catalog.library_view import build_library
from luna_core.metadata.audit import audit_prompts
from luna_core.vault.manifests import commit_segments

LUNA_CATALOG = dg.AssetKey("luna_catalog")


@dg.asset(
    key=LUNA_CATALOG,
    deps=[VISION_EMBEDDINGS, TEXT_CONDITIONINGS],
    group_name="catalog",
    kinds={"duckdb"},
    code_version="2",
    automation_condition=on_upstream_change(),
    check_specs=[
        dg.AssetCheckSpec(
            "every_image_counted_once",
            asset=LUNA_CATALOG,
            description="Every ok image is in the library view exactly once, with an id and a "
            "split.",
        ),
        dg.AssetCheckSpec(
            "no_orphans",
            asset=LUNA_CATALOG,
            description="No vault row or generation points at an image or prompt the catalog no "
            "longer has.",
        ),
        dg.AssetCheckSpec(
            "prompts_are_encoded_text",
            asset=LUNA_CATALOG,
            description="No stored prompt holds a command-line switch, a JSON fragment, a "
            "ComfyUI node "
            "link or mojibake: text no generator encoded.",
        ),
    ],
)
def luna_catalog(
    context: dg.AssetExecutionContext, luna: LunaHomeResource, models: LunaModelsResource
) -> dg.MaterializeResult:
    """The `library` view: one row per image joining generation, vision row and conditioning
    rows, with a stable image id and a train/val/test split that near-duplicates share."""
    profile = models.resolve(luna.luna_home)
    # Rows that shards embedded apart (segment stores and their manifests) enter the catalog here,
    # in one step.
    segments = commit_segments(luna.luna_home, profile)
    if any(segments.values()):
        context.log.info(f"committed segment rows: {segments}")
    report = build_library(luna.luna_home, profile)
    orphans = sum(report.orphans.values())
    audit = audit_prompts(luna.luna_home.catalog_path)
    return dg.MaterializeResult(
        metadata={
            "images": report.images,
            "new ids": report.new_ids,
            "by split": dg.MetadataValue.json(report.by_split),
            "with vision row": report.with_vision_row,
            "with prompt row": report.with_prompt_row,
            "with negative row": report.with_negative_row,
            "orphans": dg.MetadataValue.json(report.orphans),
            "retired (left the library)": dg.MetadataValue.json(report.retired),
            "segment rows committed": dg.MetadataValue.json(segments),
            "new images' splits": dg.MetadataValue.json(report.splits.assigned),
            "near-duplicate links found": dg.MetadataValue.json(
                {
                    **report.splits.links,
                    "images compared": report.splits.scanned,
                    "cosine threshold": report.splits.threshold,
                    "vision links unsure": report.splits.vision_unsure or "no",
                }
            ),
        },
        data_version=dg.DataVersion(report.digest),
        check_results=[
            dg.AssetCheckResult(
                check_name="every_image_counted_once",
                passed=report.uncounted == 0,
                metadata={"images": report.images, "uncounted or doubled": report.uncounted},
            ),
            # Leftovers the retirement above missed (harmless to answers): a warning.
            dg.AssetCheckResult(
                check_name="no_orphans",
                passed=orphans == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={k: v for k, v in report.orphans.items()},
            ),
            dg.AssetCheckResult(
                check_name="prompts_are_encoded_text",
                passed=audit.passed,
                metadata={
                    "generations checked": audit.checked,
                    **audit.found,
                    "examples": dg.MetadataValue.json(audit.examples),
                },
            ),
        ],
    )
