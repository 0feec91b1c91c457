"""The Luna code location (workspace.yaml, `[tool.dagster]`): Luna's Definitions for the home in
$LUNA_HOME, else ./luna_home. Everything else lives in `luna_assets`."""

from __future__ import annotations

import dagster as dg

from luna_assets.definitions import BUILD_ALL_JOB, build_definitions

defs = build_definitions()


def luna_build_all_job() -> dg.JobDefinition:
    """The build-everything job of the environment's home, reconstructable in other processes (for
    `dg.execute_job` with the default multiprocess executor)."""
    return defs.resolve_job_def(BUILD_ALL_JOB)
