"""Scale-out on Dagster's Celery executor: every step of every run goes to `luna worker` processes
(one per machine or GPU) through a Redis broker, when the home names one ([scale] celery_broker
in luna.toml, or $LUNA_CELERY_BROKER).

A worker that dies (a machine lost, SIGKILL, the OOM killer) takes its step's result with it, and
the run would wait for it forever: `reap_lost_steps` marks the steps of workers that no longer
answer as failed, so the run fails and its partition can be run again (each shard's rerun is
idempotent).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.home.settings import KEYS_BY_NAME

BROKER = KEYS_BY_NAME["scale.celery_broker"]
QUEUE = "dagster"
WORKER_CONCURRENCY = 1  # steps a worker runs at once: one per GPU
WORKER_LOGLEVEL = "INFO"
POLL_SECONDS = 0.1  # how often a run looks at its steps on the workers
WARM_SECONDS = 600.0  # how long a pool child may take to start: it loads the models
log = logging.getLogger(__name__)

# Workers take one step at a time and record when they start one (with their name), which is what
# lets `reap_lost_steps` tell a running step from one whose worker is gone. They reserve no message
# beyond the step in hand: a worker that dies holding one would leave it undelivered (Redis hands an
# unacknowledged message to another worker only after its visibility timeout, an hour) and its run
# waiting on it.
CELERY_SETTINGS = {
    "task_track_started": True,
    "worker_prefetch_multiplier": 1,
    "worker_disable_prefetch": True,
    "broker_connection_retry_on_startup": True,
    "result_expires": 7 * 24 * 3600,
}


def celery_broker(home: LunaHome) -> str | None:
    """The broker URL the home's runs use (None: runs execute on this machine)."""
    setting = home.settings().setting("scale.celery_broker")
    url = setting.value
    if url in ("", None):
        return None
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://")):
        raise LunaConfigError(
            f"celery broker {url!r} ({setting.where()} of {home.root}): "
            "need a Redis URL, e.g. redis://127.0.0.1:6379/0"
        )
    return url


def executor_config(broker: str) -> dict:
    """The celery executor's config: Redis as broker and result backend, Luna's worker settings."""
    return {
        "broker": broker,
        "backend": broker,
        "include": [],
        "config_source": dict(CELERY_SETTINGS),
    }


def celery_executor_for(broker: str):
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from dagster_celery import celery_executor, core_execution_loop

    # The run coordinator looks at its steps' results once a tick: dagster-celery's second makes a
    # shard's every step wait up to a second to be seen done; a tick costs one Redis read per
    # running step.
    core_execution_loop.TICK_SECONDS = POLL_SECONDS
    return celery_executor.configured(executor_config(broker), name="luna_celery")


def celery_app(broker: str):
    """The Celery app as the executor and the workers build it, with the step task registered."""
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_task

    config = executor_config(broker)
    app = make_app(
        CeleryExecutor.for_cli(
            config["broker"], config["backend"], config["include"], config["config_source"]
        ).app_args()
    )
    create_task(app)
    return app


def run_worker(
    home: LunaHome,
    name: str | None = None,
    concurrency: int = WORKER_CONCURRENCY,
    loglevel: str = WORKER_LOGLEVEL,
) -> None:
    """Run a Celery worker for the home's runs in this process until it is stopped (SIGTERM: after
    the step in hand). Steps load the code location from $LUNA_HOME like every other Dagster
    process."""
    broker = celery_broker(home)
    if broker is None:
        raise LunaConfigError(
            f"{home.config_path} names no Celery broker: set [scale] celery_broker "
            f"(e.g. redis://127.0.0.1:6379/0) or ${BROKER.env}"
        )
    os.environ[KEYS_BY_NAME["home"].env] = str(home.root)
    os.environ["DAGSTER_HOME"] = str(home.dagster_home)
    # Celery is imported by the processes that run a worker, not by every Dagster process
    from celery.signals import worker_process_init

    name = name or f"luna-{socket.gethostname()}-{os.getpid()}"
    app = celery_app(broker)
    # A step loads its models into the process that runs it (the pool's child), where they stay
    # for the next step: loading them as the child starts takes the first step's load off the
    # runs' clock. The pool waits for a child that is loading instead of replacing it.
    app.conf.worker_proc_alive_timeout = WARM_SECONDS
    worker_process_init.connect(lambda **_: _warm(home), weak=False)
    app.worker_main(
        [
            "worker",
            "-Q",
            QUEUE,
            "-n",
            name if "@" in name else f"{name}@%h",
            "--concurrency",
            str(concurrency),
            "--prefetch-multiplier",
            "1",
            "--loglevel",
            loglevel,
            "--without-gossip",
            "--without-mingle",
        ]
    )


def _warm(home: LunaHome) -> None:
    # torch and the models take seconds to import and load: only a worker's pool child pays, once
    from luna_core.vault.embed_prompts import warm_encoders

    started = time.perf_counter()
    try:
        loaded = warm_encoders(home)
    except Exception as exc:  # a step that needs the models will raise the same, with its run
        log.warning("worker: could not load the models ahead of the steps (%s)", exc)
        return
    log.info("worker: %s loaded in %.1f s", ", ".join(loaded), time.perf_counter() - started)


def live_workers(app, timeout: float = 2.0) -> set[str]:
    return {name for reply in app.control.ping(timeout=timeout) or [] for name in reply}


def reap_lost_steps(app, timeout: float = 2.0) -> list[str]:
    """Steps started by a worker that no longer answers a ping (two in a row) are marked failed in
    the result backend (the run then fails, and its partition can be run again). Returns one line
    per step."""
    # Dagster takes about two seconds to import: only the commands that run the chain pay for it
    from billiard.exceptions import WorkerLostError

    started = {}
    for key in app.backend.client.scan_iter(match=b"celery-task-meta-*"):
        task_id = key.decode().removeprefix("celery-task-meta-")
        meta = app.backend.get_task_meta(task_id)
        if meta.get("status") == "STARTED" and (meta.get("result") or {}).get("hostname"):
            started[task_id] = meta["result"]["hostname"]
    alive = live_workers(app, timeout) if started else set()
    if any(worker not in alive for worker in started.values()):
        # a worker must miss two pings in a row: one can be a hiccup
        alive |= live_workers(app, timeout)
    reaped = []
    for task_id, worker in started.items():
        if worker not in alive:
            message = f"celery worker {worker} stopped answering while it ran task {task_id}"
            app.backend.mark_as_failure(task_id, WorkerLostError(message))
            log.warning("%s: marked failed", message)
            reaped.append(message)
    return reaped
