"""The DuckDB catalog: one file under the Luna home; tables created here, nowhere else.

DuckDB lets one process open a file read-write, and then no other process may open it at all, so
every writer opens, works in short transactions and closes; errors from a held lock name the holder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import duckdb

from luna_core.errors import LunaConfigError

SCHEMA_VERSION = 1

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_info (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    # One row per file path. `status`: ok | missing (gone since last scan) | quarantined (path now
    # holds a file that cannot be read; see quarantine).
    """CREATE TABLE IF NOT EXISTS images (
        path VARCHAR PRIMARY KEY,
        content_hash VARCHAR NOT NULL,
        root VARCHAR NOT NULL,
        size_bytes BIGINT NOT NULL,
        mtime_ns BIGINT NOT NULL,
        width INTEGER,
        height INTEGER,
        format VARCHAR,
        status VARCHAR NOT NULL,
        first_seen TIMESTAMP NOT NULL,
        last_seen TIMESTAMP NOT NULL,
        moved_from VARCHAR,
        warnings VARCHAR[]
    )""",
    # One row per content hash: how the image was made.
    """CREATE TABLE IF NOT EXISTS generations (
        content_hash VARCHAR PRIMARY KEY,
        generator VARCHAR NOT NULL,
        generator_version VARCHAR,
        prompt VARCHAR,
        negative_prompt VARCHAR,
        seed HUGEINT,
        steps INTEGER,
        sampler VARCHAR,
        scheduler VARCHAR,
        cfg_scale DOUBLE,
        width INTEGER,
        height INTEGER,
        model VARCHAR,
        model_hash VARCHAR,
        loras STRUCT(name VARCHAR, weight DOUBLE)[],
        extra JSON,
        raw JSON,
        warnings VARCHAR[],
        parsed_at TIMESTAMP NOT NULL
    )""",
    # Every file that could not be read, with a reason code and a sentence for a person.
    """CREATE TABLE IF NOT EXISTS quarantine (
        path VARCHAR PRIMARY KEY,
        root VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        detail VARCHAR NOT NULL,
        size_bytes BIGINT,
        mtime_ns BIGINT,
        seen_at TIMESTAMP NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS ingest_runs (
        run_id VARCHAR PRIMARY KEY,
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP,
        roots VARCHAR[],
        counts JSON
    )""",
]


def _open(path: Path, read_only: bool) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        message = str(exc)
        if "lock" in message.lower():
            raise LunaConfigError(
                f"catalog {path} is in use by another process ({message.splitlines()[0]}); "
                "wait for that run to finish and try again"
            ) from None
        raise LunaConfigError(f"catalog {path} cannot be opened: {message}") from None


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    for statement in _SCHEMA:
        con.execute(statement)
    con.execute(
        "INSERT OR REPLACE INTO schema_info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
    )


@contextlib.contextmanager
def open_catalog(path: str | Path, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the catalog at `path`, schema ensured when writable; closed on exit."""
    path = Path(path)
    if read_only and not path.exists():
        raise LunaConfigError(f"no catalog at {path}: run `luna ingest` or `luna demo` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only)
    try:
        if not read_only:
            ensure_schema(con)
        yield con
    finally:
        con.close()


# ---------------------------------------------------------------- health and summaries


def rows_without_content_hash(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Paths of image rows whose identity is missing or not a SHA-256 hex digest."""
    return [p for (p,) in con.execute(
        "SELECT path FROM images WHERE content_hash IS NULL OR NOT regexp_full_match(content_hash, '[0-9a-f]{64}') LIMIT 20"
    ).fetchall()]


def quarantined_without_reason(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [p for (p,) in con.execute(
        "SELECT path FROM quarantine WHERE coalesce(trim(reason), '') = '' OR coalesce(trim(detail), '') = '' LIMIT 20"
    ).fetchall()]


def images_without_generation(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(
        "SELECT count(*) FROM images i ANTI JOIN generations g USING (content_hash) WHERE i.status = 'ok'"
    ).fetchone()[0]


def sample_images(con: duckdb.DuckDBPyConnection, limit: int = 10) -> list[dict]:
    """A few catalogued images with their prompts, one per generator first, for a person to eyeball."""
    cursor = con.execute("""
        SELECT i.path, g.generator, i.format, i.width || 'x' || i.height AS size, g.seed,
               left(coalesce(g.prompt, ''), 80) AS prompt
        FROM images i JOIN generations g USING (content_hash)
        WHERE i.status = 'ok'
        QUALIFY row_number() OVER (PARTITION BY g.generator ORDER BY i.path) = 1
        ORDER BY g.generator LIMIT ?""", [limit])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def quarantine_rows(con: duckdb.DuckDBPyConnection, limit: int = 50) -> list[dict]:
    cursor = con.execute("SELECT path, reason, detail FROM quarantine ORDER BY reason, path LIMIT ?", [limit])
    return [dict(zip(("path", "reason", "detail"), row)) for row in cursor.fetchall()]
