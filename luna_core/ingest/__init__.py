"""Ingesting library roots: the stat-only scan, reading one file (hash, container, metadata),
and the incremental run that commits batches to the catalog."""
