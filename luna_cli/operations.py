"""`luna mlflow-server`: the home's MLflow tracking server (registry and UI), on PostgreSQL when
set."""

from __future__ import annotations

import argparse
import json
import os

from luna_assets.executor import celery_broker, run_worker
from luna_core.home.home import LunaHome
from luna_core.operations.dagster_instance import gpu_slots
from luna_core.operations.mlflow_server import (
    ensure_database,
    mlflow_backend_uri,
    mlflow_server_command,
)


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    home = LunaHome.existing(args.home).ensure()
    backend = args.backend_store_uri or mlflow_backend_uri(home)
    if backend.startswith("postgres"):
        ensure_database(backend)
    url = f"http://{args.host}:{args.port}"
    if args.record:
        home.set_operations_setting("tracking_uri", url)
        print(
            f"Recorded tracking_uri = {url} in {home.config_path}: the chain and every registry "
            "command use it"
        )
    shown = backend.split("@")[-1] if "@" in backend else backend  # no password on the screen
    print(
        f"Starting the MLflow tracking server for {home.root} on {url} (backend {shown}; "
        "artifacts under "
        f"{home.mlflow_dir / 'artifacts'}); Ctrl-C stops it"
    )
    command = mlflow_server_command(home, args.host, args.port, backend, args.workers)
    env = dict(os.environ)
    # MLflow 3's job runner (GenAI jobs Luna never submits) starts ~8 consumer processes: off unless
    # asked.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execvpe(command[0], command, env)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    """Record the home's scale-out settings in luna.toml and say what they mean."""
    home = LunaHome.existing(args.home).ensure()
    if args.shards is not None:
        home.set_vault_shards(args.shards)
    if args.celery_broker is not None:
        home.set_setting("scale", "celery_broker", args.celery_broker)
    if args.gpu_slots is not None:
        home.set_operations_setting("gpu_slots", args.gpu_slots)
    home.ensure()  # rewrites the managed dagster.yaml when the gpu pool changed

    shards, broker = home.vault_shards(), celery_broker(home)
    print(f"{home.config_path}:")
    print(
        f"  vault shards  {shards}"
        + (
            " (one store: the single-machine default)"
            if shards == 1
            else f" (vision_embeddings and text_conditionings have {shards} partitions)"
        )
    )
    print(
        f"  celery broker {broker or '(none: runs execute on this machine)'}"
        + ("; start `luna worker` on each machine" if broker else "")
    )
    pool = (
        "the Celery workers' queue (each worker one step at a time)"
        if broker
        else gpu_slots(home.settings()) or "one slot per GPU found here"
    )
    print(f"  gpu pool      {pool}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    home = LunaHome.existing(args.home).ensure()
    run_worker(home, args.name, args.concurrency, args.loglevel)
    return 0


def _shown(value) -> str:
    """A setting as printed: a URL's password hidden."""
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if sep and "@" in rest and ":" in rest.split("@", 1)[0]:
        user = rest.split("@", 1)[0].split(":", 1)[0]
        return f"{scheme}://{user}:***@{rest.split('@', 1)[1]}"
    return text


def cmd_config(args: argparse.Namespace) -> int:
    """Every setting's effective value and where it came from (argument > environment > luna.toml
    > default)."""
    home = LunaHome.resolve(args.home)
    settings = home.settings({"home": args.home} if args.home else None)
    rows = [
        {
            "setting": s.key.name,
            "value": _shown(s.value),
            "from": s.where(),
            "environment": s.key.env,
            "about": s.key.doc,
        }
        for s in settings.all()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"Settings of {home.root} (argument > environment > {home.config_path.name} > default):")
    width = {
        column: max(len(column), *(len(r[column]) for r in rows))
        for column in ("setting", "value", "from")
    }
    for row in rows:
        value = row["value"] if row["value"] != "" else "(none)"
        print(
            f"  {row['setting']:<{width['setting']}}  {value:<{width['value']}}  "
            f"{row['from']:<{width['from']}}  "
            f"{row['about']}"
        )
    return 0
