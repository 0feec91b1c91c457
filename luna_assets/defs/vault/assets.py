"""The `vault` domain (group `embeddings`): the two Zarr stores, filled incrementally after every
ingest."""

import hashlib

import dagster as dg

from luna_assets.automation import GPU_POOL, on_upstream_change
from luna_assets.defs.ingest.assets import INGESTED_IMAGES
from luna_assets.metadata import check_results, progress_logger, seconds
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.catalog.connection import open_catalog, vault_rows_digest
from luna_core.home.storage import location
from luna_core.models.profiles import ModelProfile
from luna_core.vault.checks import check_store
from luna_core.vault.embed import EmbedReport, embed_images
from luna_core.vault.embed_prompts import embed_prompts
from luna_core.vault.segments import Shard, shard_keys, shard_manifests

VISION_EMBEDDINGS = dg.AssetKey("vision_embeddings")
TEXT_CONDITIONINGS = dg.AssetKey("text_conditionings")
STORE_CHECKS = {
    "counts_agree": "Catalog and Zarr agree: one committed row per item, rows contiguous and "
    "inside the arrays.",
    "no_nan_or_inf": "No NaN or inf in the rows written by the run (and a sample of older rows).",
    "norms_sane": "Norms are sane: unit-length image embeddings; no all-zero (never written) "
    "conditioning rows.",
}


def _check_specs(asset_key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(name, asset=asset_key, description=text)
        for name, text in STORE_CHECKS.items()
    ]


def _data_version(
    luna: LunaHomeResource, report: EmbedReport, shard: Shard | None
) -> dg.DataVersion:
    # a shard's rows are its manifests (each written once, under a unique name)
    if shard is not None:
        names = "\n".join(
            p.name for p in shard_manifests(location(report.store_path), shard, committed=True)
        )
        return dg.DataVersion(
            f"{report.store_key}:{shard.key}:{hashlib.sha256(names.encode()).hexdigest()[:16]}"
        )
    with open_catalog(luna.luna_home.catalog_path, read_only=True) as con:
        rows = vault_rows_digest(con, report.kind, report.store_key)
    return dg.DataVersion(f"{report.store_key}:{rows}")


def _result(
    report: EmbedReport,
    luna: LunaHomeResource,
    profile: ModelProfile,
    unit: str,
    shard: Shard | None,
) -> dg.MaterializeResult:
    outcomes = check_store(luna.luna_home, profile, report.kind, report.new_rows, shard)
    metadata = {
        "rows added": report.added,
        "rows already present (skipped)": report.already_present,
        "rows in store": report.rows_total,
        "failed": report.failed,
        "failures by reason": dg.MetadataValue.json(report.failures_by_reason),
        f"{unit}/s": dg.MetadataValue.float(round(report.items_per_s, 2)),
        "model forward share of time": dg.MetadataValue.float(
            round(report.model_seconds / report.seconds, 3) if report.seconds else 0.0
        ),
        "duration (s)": seconds(report.seconds),
        "model load (s)": seconds(report.load_seconds),
        "MB on disk": dg.MetadataValue.float(round(report.bytes_on_disk / 1e6, 2)),
        "model": report.model,
        "store key": report.store_key,
        "device": report.device or "(no model work)",
        "dtype": report.dtype or "(no model work)",
        "store": dg.MetadataValue.path(report.store_path),
    }
    if shard is not None:
        metadata["shard"] = (
            f"{shard.index} of {shard.count} (rows wait in its manifests for luna_catalog's commit)"
        )
        metadata["rows in store"] = report.rows_total - shard.first_row
    if report.kind == "vision":
        metadata["files changed since ingest (left for the next ingest)"] = (
            report.changed_since_ingest
        )
    else:
        metadata["prompts over one chunk of 77 tokens (kept whole, one row per chunk)"] = (
            report.chunked
        )
        metadata["prompts cut at 77 tokens (the literal rules)"] = report.truncated
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=check_results(outcomes),
        data_version=_data_version(luna, report, shard),
    )


def _fill(
    context: dg.AssetExecutionContext, luna: LunaHomeResource, models: LunaModelsResource, kind: str
) -> dg.MaterializeResult:
    """Embed what the store lacks (a partition: what its shard lacks), then check it; `kind` is
    "vision" or "text"."""
    home = luna.luna_home
    profile = models.resolve(home)
    shard = Shard.from_key(context.partition_key) if context.has_partition_key else None
    where = f", shard {shard.index} of {shard.count}" if shard else ""
    if kind == "vision":
        context.log.info(
            f"Vision model {profile.vision_model} (profile {profile.name}); store key "
            f"{profile.vision_key}{where}"
        )
        report = embed_images(
            home,
            profile,
            models.embed_options(models.vision_batch_size, home),
            on_progress=progress_logger(context, "images embedded"),
            shard=shard,
        )
    else:
        context.log.info(
            f"SDXL text encoders {profile.sdxl_model} (profile {profile.name}); store key "
            f"{profile.text_key}{where}"
        )
        report = embed_prompts(
            home,
            profile,
            models.embed_options(models.text_batch_size, home),
            on_progress=progress_logger(context, "prompts encoded"),
            shard=shard,
        )
    return _result(report, luna, profile, "images" if kind == "vision" else "prompts", shard)


def store_assets(shards: int) -> list[dg.AssetsDefinition]:
    """The two store assets; with `shards` > 1, partitioned by shard of the item hash (one
    segment store each)."""
    partitions = dg.StaticPartitionsDefinition(shard_keys(shards)) if shards > 1 else None
    # Both stores follow every ingest that changed the library, side by side (one process each).
    common = {
        "deps": [INGESTED_IMAGES],
        "group_name": "embeddings",
        "kinds": {"zarr", "pytorch"},
        "code_version": "3",
        "automation_condition": on_upstream_change(),
        "pool": GPU_POOL,
        "partitions_def": partitions,
    }

    @dg.asset(key=VISION_EMBEDDINGS, check_specs=_check_specs(VISION_EMBEDDINGS), **common)
    def vision_embeddings(
        context: dg.AssetExecutionContext, luna: LunaHomeResource, models: LunaModelsResource
    ) -> dg.MaterializeResult:
        """CLIP-ViT image embeddings (projected, unit length, float16) of every ingested image,
        one Zarr row per content hash and vision model."""
        return _fill(context, luna, models, "vision")

    @dg.asset(key=TEXT_CONDITIONINGS, check_specs=_check_specs(TEXT_CONDITIONINGS), **common)
    def text_conditionings(
        context: dg.AssetExecutionContext, luna: LunaHomeResource, models: LunaModelsResource
    ) -> dg.MaterializeResult:
        """SDXL text conditionings (prompt_embeds [77, 2048] + pooled [1280], float16) of every
        unique prompt text, positive and negative, one Zarr row per prompt hash and encoder
        pair."""
        return _fill(context, luna, models, "text")

    return [vision_embeddings, text_conditionings]


vision_embeddings, text_conditionings = store_assets(1)
