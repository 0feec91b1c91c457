"""Luna's Dagster definitions, one folder per domain. Each folder holds its assets, checks, sensors,
schedules and jobs and offers them as `definitions(home)`; `luna_assets.definitions` merges them."""

from luna_assets.defs import catalog, index, ingest, projector, refine, reports, vault

DOMAINS = (ingest, vault, catalog, index, projector, refine, reports)
