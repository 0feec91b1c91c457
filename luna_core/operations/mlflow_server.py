"""The production set-up of a home: its MLflow tracking server (the registry, with artifacts under
the home) beside the Dagster instance, both on PostgreSQL when a URL is configured."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.operations.dagster_instance import libpq_url, postgres_url, sqlalchemy_url

MLFLOW_WORKERS = 1  # the tracking server's worker processes
MLFLOW_DATABASE_SUFFIX = "_mlflow"  # Dagster and MLflow both have a `runs` table: one database each


def database_beside(url: str, suffix: str = MLFLOW_DATABASE_SUFFIX) -> str:
    """The URL of a database named like `url`'s with `suffix`, on the same server and
    credentials."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    if not parts.scheme.startswith("postgres"):
        raise LunaConfigError(
            f"{url!r} is not a PostgreSQL URL (postgresql://user:password@host:port/database)"
        )
    return sqlalchemy_url(urlunsplit(parts._replace(path="/" + name + suffix)))


def ensure_database(url: str) -> None:
    """Create the database `url` names when it does not exist, connecting to the server's `postgres`
    database with the same credentials."""
    # optional: only a home with PostgreSQL needs it
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(libpq_url(url))
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    try:
        con = psycopg2.connect(admin)
    except psycopg2.Error as exc:
        raise LunaConfigError(
            f"cannot reach PostgreSQL at {parts.hostname}:{parts.port or 5432}: "
            f"{str(exc).strip().splitlines()[0]}"
        ) from None
    try:
        con.autocommit = True
        with con.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.Error as exc:
        raise LunaConfigError(
            f"cannot create the database {name!r} for MLflow: {str(exc).strip().splitlines()[0]} "
            f"(create it, or give --backend-store-uri)"
        ) from None
    finally:
        con.close()


def mlflow_backend_uri(home: LunaHome) -> str:
    """Where the tracking server keeps runs and the registry: PostgreSQL beside the Dagster
    instance's database when one is configured, else the home's embedded sqlite file."""
    postgres = postgres_url(home.settings())
    return database_beside(postgres) if postgres else home.default_tracking_uri()


def mlflow_server_command(
    home: LunaHome, host: str, port: int, backend: str, workers: int = MLFLOW_WORKERS
) -> list[str]:
    """`mlflow server` with this backend store, serving the artifacts (under the home, or
    [storage] root)."""
    # object storage under [storage] root, else the home's folder
    artifacts = home.mlflow_artifacts()
    if artifacts.startswith("file:"):
        artifacts = home.mlflow_dir / "artifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
    found = Path(sys.executable).with_name("mlflow")
    executable = str(found) if found.exists() else shutil.which("mlflow") or "mlflow"
    return [
        executable,
        "server",
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        str(artifacts),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
