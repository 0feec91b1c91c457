"""Dagster wiring for Luna: Definitions, resources, jobs, sensors."""
