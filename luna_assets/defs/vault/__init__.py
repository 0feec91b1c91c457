"""The `vault` domain (group `embeddings`): the two Zarr stores, filled incrementally after every
ingest."""
