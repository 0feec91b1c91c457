"""The embeddings vault: CLIP-ViT image embeddings and SDXL text conditionings, in Zarr, indexed by
the catalog (which row holds which content hash or prompt hash, for which model)."""
