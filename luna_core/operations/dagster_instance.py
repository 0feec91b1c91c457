"""The Dagster instance of a Luna home (`dagster_home/dagster.yaml`), written on first use.

What a workstation running Luna all day needs: a run queue (a bounded number of runs at once), one
concurrency pool `gpu` that every model-running step on the data's path takes a slot of (as many
slots as GPUs, one on a CPU), run monitoring and retries, and tick retention. With a PostgreSQL
URL (`[operations] postgres_url` in luna.toml, or $LUNA_POSTGRES_URL), runs, events and schedules
live in PostgreSQL.

Luna rewrites the file only while it carries the MANAGED marker line; delete that line to keep
edits of your own.
"""

from __future__ import annotations

import json
from pathlib import Path

from luna_core.files import write_atomically
from luna_core.home.settings import Settings

MANAGED = (
    "# managed-by-luna v1: Luna rewrites this file when its settings change; delete this "
    "line to keep your edits."
)
MAX_CONCURRENT_RUNS = 4
RUN_RETRIES = 2


def gpu_count() -> int:
    """GPUs torch can see (the `gpu` pool's slots); 0 without CUDA or torch."""
    try:
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001 - a broken driver means no GPU slots, not a failed start
        return 0


def postgres_url(settings: Settings) -> str | None:
    """$LUNA_POSTGRES_URL, else `[operations] postgres_url` of luna.toml, else None (local
    storage)."""
    return settings.text("operations.postgres_url") or None


def sqlalchemy_url(url: str) -> str:
    """`url` with the psycopg2 driver named: SQLAlchemy 2.1 defaults to psycopg 3, whose server-side
    parameters dagster-postgres' statements (NOTIFY ..., %s) do not support."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg2://{rest}" if sep and scheme in ("postgres", "postgresql") else url


def libpq_url(url: str) -> str:
    """`url` as libpq (psycopg2.connect) reads it: no SQLAlchemy driver name."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


def instance_yaml(
    gpu_slots: int, postgres: str | None = None, max_concurrent_runs: int = MAX_CONCURRENT_RUNS
) -> str:
    """The dagster.yaml text for these settings."""
    lines = [
        MANAGED,
        "# The Dagster instance of this Luna home; see README, 'Running Luna all day'.",
        "telemetry:",
        "  enabled: false  # Luna runs offline",
        "",
        "# Runs launched from the UI, sensors and schedules wait in a queue; this many run at "
        "once.",
        "# Every step that runs a model on the data's path (embeddings, projector, refine) takes "
        "a slot of the",
        f"# pool `gpu`: {gpu_slots} slot(s): [operations] gpu_slots, else one per GPU found (one "
        "on a CPU machine);",
        f"# with a Celery broker, {CELERY_POOL_SLOTS}: the workers' queue is the limit.",
        "# The weekly refinement benchmark has a pool of its own (`benchmark`, the same size): "
        "it never holds",
        "# back a library change on its way to the index.",
        "concurrency:",
        "  runs:",
        f"    max_concurrent_runs: {max_concurrent_runs}",
        "  pools:",
        f"    default_limit: {gpu_slots}",
        "    granularity: op",
        "",
        "# Runs stuck starting or cancelling are failed; Luna's `dead_run_monitor` sensor fails "
        "runs whose",
        "# process died (the default launcher cannot check run workers), and run retries "
        "re-launch them.",
        "run_monitoring:",
        "  enabled: true",
        "  start_timeout_seconds: 300",
        "  cancel_timeout_seconds: 300",
        "  poll_interval_seconds: 60",
        "run_retries:",
        "  enabled: true",
        f"  max_retries: {RUN_RETRIES}",
        "  retry_on_asset_or_op_failure: false  # retried: a dead or crashed run; not: a step's "
        "own error",
        "",
        "# Old ticks are purged (days; -1 keeps them).",
        "retention:",
        "  schedule:",
        "    purge_after_days: 90",
        "  sensor:",
        "    purge_after_days:",
        "      skipped: 7",
        "      failure: 30",
        "      success: -1",
        "  auto_materialize:",
        "    purge_after_days:",
        "      skipped: 7",
        "      failure: 30",
        "      success: -1",
    ]
    if postgres:
        lines += [
            "",
            "# Runs, events and schedules in PostgreSQL (dagster-postgres).",
            "storage:",
            "  postgres:",
            f"    postgres_url: {json.dumps(sqlalchemy_url(postgres))}",
        ]
    return "\n".join(lines) + "\n"


def ensure_instance(dagster_home: Path, settings: Settings) -> Path:
    """Write dagster.yaml when missing, or when Luna manages it and its storage setting changed."""
    path = dagster_home / "dagster.yaml"
    postgres = postgres_url(settings)
    slots = pool_slots(settings)
    if path.exists():
        current = path.read_text(encoding="utf-8")
        if (
            MANAGED.split(":")[0] not in current
            and "Dagster instance of this Luna home: local storage" not in current
        ):
            # the person's own file (the first Luna file carried no marker: it is replaced)
            return path
        storage = f"postgres_url: {json.dumps(sqlalchemy_url(postgres))}" if postgres else None
        if (
            current.startswith(MANAGED)
            and ((storage in current) if storage else ("postgres_url" not in current))
            and (slots is None or f"default_limit: {slots}\n" in current)
        ):
            return path  # up to date: no need to count GPUs (an import of torch)
    slots = slots or max(1, gpu_count())
    write_atomically(
        path, lambda tmp: tmp.write_text(instance_yaml(slots, postgres), encoding="utf-8")
    )
    return path


# With Celery the workers are the limit (each runs one step at a time, one per GPU): every model
# step goes to the broker's queue at once and a worker takes the next the moment it is free. A pool
# the workers' size would hold steps back until their runs ask again, which Dagster backs off from
# 1 s to 15 s: workers idle between steps (seconds a shard, benchmarks/bench_scale.py --celery).
CELERY_POOL_SLOTS = 1000  # the most Dagster accepts


def pool_slots(settings: Settings) -> int | None:
    """The `gpu` pool's size: the Celery workers' queue decides when the home has a broker, else
    `[operations] gpu_slots` (None: the GPUs found here)."""
    if settings.text("scale.celery_broker"):
        return CELERY_POOL_SLOTS
    return gpu_slots(settings)


def gpu_slots(settings: Settings) -> int | None:
    """`[operations] gpu_slots`: the `gpu` pool's size set by hand; None (0, the default): the GPUs
    this machine has. A home with a Celery broker queues at its workers instead (pool_slots)."""
    return settings.integer("operations.gpu_slots", 0, 4096) or None
