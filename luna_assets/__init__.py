"""Luna's Dagster assets and asset checks: thin wrappers over luna_core."""

from luna_assets.ingest import INGESTED_IMAGES, ingested_images

__all__ = ["INGESTED_IMAGES", "ingested_images"]
