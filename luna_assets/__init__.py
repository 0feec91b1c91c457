"""Luna's Dagster code, one package: `defs/<domain>/` folders (ingest, vault, catalog, index,
projector, refine, reports) each hold their assets, checks, sensors, schedules and jobs;
`definitions.py` merges them with the executor (`executor.py`) and the run monitor (`runs.py`).
Shared pieces: `resources.py`, `automation.py`, `metadata.py`. Thin wrappers over luna_core;
`dagster_project` is the code location."""
