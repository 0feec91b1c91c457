"""`luna mlflow-server`: the home's MLflow tracking server (registry and UI), on PostgreSQL when set."""

from __future__ import annotations

import argparse
import os

from luna_core.operations import ensure_database, mlflow_backend_uri, mlflow_server_command
from luna_core.settings import LunaHome


def cmd_mlflow_server(args: argparse.Namespace) -> int:
    home = LunaHome.existing(args.home).ensure()
    backend = args.backend_store_uri or mlflow_backend_uri(home)
    if backend.startswith("postgres"):
        ensure_database(backend)
    url = f"http://{args.host}:{args.port}"
    if args.record:
        home.set_operations_setting("tracking_uri", url)
        print(f"Recorded tracking_uri = {url} in {home.config_path}: the chain and every registry command use it")
    shown = backend.split("@")[-1] if "@" in backend else backend  # no password on the screen
    print(f"Starting the MLflow tracking server for {home.root} on {url} (backend {shown}; artifacts under "
          f"{home.mlflow_dir / 'artifacts'}); Ctrl-C stops it")
    command = mlflow_server_command(home, args.host, args.port, backend, args.workers)
    env = dict(os.environ)
    # MLflow 3's job runner (GenAI jobs Luna never submits) starts ~8 consumer processes: off unless asked.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execvpe(command[0], command, env)
    return 0
