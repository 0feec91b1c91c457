"""Luna's Dagster definitions, one folder per domain. Each folder holds its assets, checks,
sensors, schedules and jobs and offers them as `definitions(home)` from its `definitions.py`;
`luna_assets.definitions` merges them."""
