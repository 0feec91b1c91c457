"""Run monitoring for the default run launcher, which cannot check its run workers: a run left
STARTED by a process that died is marked failed (and then retried by run retries)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from luna_assets.executor import celery_app, celery_broker, reap_lost_steps
from luna_core.home.home import LunaHome

DEAD_RUN_MONITOR = "dead_run_monitor"


def _running(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)  # no /proc (macOS): the signal-0 probe
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def fail_dead_runs(instance, mark: bool = True) -> list[str]:
    """Runs left STARTED by a process that died (killed, crashed, a machine restart) are marked
    failed, so the UI and the next build do not wait on them forever. Returns one line per such
    run (with `mark=False`, only finds them)."""
    marked = []
    for record in instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    ):
        run = record.dagster_run
        pids = {
            e.dagster_event.pid
            for e in instance.all_logs(run.run_id)
            if e.dagster_event and e.dagster_event.pid
        }
        if pids and not any(_running(pid) for pid in pids):
            message = (
                f"run {run.run_id[:8]} of {run.job_name} was left STARTED by process(es) "
                f"{', '.join(map(str, sorted(pids)))}, which no longer exist"
                + (": marked failed (committed work is kept; run it again)" if mark else "")
            )
            if mark:
                instance.report_run_failed(run, message)
                # Pool slots are freed by the daemon's monitor, which may not run (`luna build`):
                # free them now.
                instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            marked.append(message)
    return marked


@dg.sensor(
    name=DEAD_RUN_MONITOR,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks runs left STARTED by a process that died (killed, crashed, a restart) as "
    "failed, so run "
    "retries re-launch them and the gpu pool's slots are freed. Assumes runs execute on this "
    "machine "
    "(the default run launcher); with a Celery broker, also fails the steps of workers that "
    "stopped answering.",
)
def dead_run_monitor(context: dg.SensorEvaluationContext):
    marked = fail_dead_runs(context.instance)
    broker = celery_broker(LunaHome.resolve())
    # steps on Celery workers: a worker that stopped answering fails its step (and so its run)
    if broker:
        marked += reap_lost_steps(celery_app(broker))
    for message in marked:
        context.log.warning(message)
    if not marked:
        return dg.SkipReason(
            "every STARTED run has a live process"
            + (" and every step a live worker" if broker else "")
        )
    return dg.SkipReason(
        f"marked {len(marked)} run(s) or step(s) failed; run retries re-launch them"
    )
