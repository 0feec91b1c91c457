"""Luna's Dagster code, one module per domain (ingest, vault, index, projector, refine, reports): each holds its
assets, checks, sensors, schedules and jobs, and offers them as `definitions(home)` (the home's settings shape some: the vault's shards). Thin wrappers over
luna_core."""

from luna_assets import index, ingest, projector, refine, reports, vault

DOMAINS = (ingest, vault, index, projector, refine, reports)
