"""Luna's Dagster assets and asset checks: thin wrappers over luna_core."""

from luna_assets.embeddings import TEXT_CONDITIONINGS, VISION_EMBEDDINGS, text_conditionings, vision_embeddings
from luna_assets.index import FAISS_INDEX, LUNA_CATALOG, faiss_index, luna_catalog
from luna_assets.ingest import INGESTED_IMAGES, ingested_images
from luna_assets.projector import PROJECTOR, projector

ALL_ASSETS = [ingested_images, vision_embeddings, text_conditionings, luna_catalog, faiss_index, projector]

__all__ = ["PROJECTOR", "projector", "ALL_ASSETS", "FAISS_INDEX", "LUNA_CATALOG", "faiss_index", "luna_catalog", "INGESTED_IMAGES", "TEXT_CONDITIONINGS", "VISION_EMBEDDINGS", "ingested_images",
           "text_conditionings", "vision_embeddings"]
