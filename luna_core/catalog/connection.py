"""The DuckDB catalog: one file under the Luna home; its tables are luna_core.catalog.schema's,
nowhere else.

DuckDB lets one process open a file read-write, and then no other process may open it at all, so
every Luna process opens it under an inter-process file lock, works in one short transaction and
closes it; a process that must wait says who holds the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

# HELD_* are re-exported: the modules that retire rows import them from here.
from luna_core.catalog.schema import (  # noqa: F401 - the stores' held sets are named from here
    HELD_IMAGES,
    HELD_PROMPTS,
    MIGRATIONS,
    PROMPTS_VIEW,
    SCHEMA,
    SCHEMA_VERSION,
)
from luna_core.errors import BusyError, CorruptStoreError, LunaConfigError, NotBuiltError
from luna_core.prompts.syntax import PARSER_VERSION

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 900.0
_process_lock = threading.RLock()  # one holder per process at a time; re-entrant for nested use
_held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth) while this process holds it


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _acquire_file_lock(path: Path, timeout_s: float, what: str = "catalog") -> None:
    """Wait for `path`'s inter-process lock (flock), telling the user who holds it while waiting."""
    key = str(_lock_path(path))
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise BusyError(
                    f"{what} {path} stayed locked for {timeout_s:.0f}s by {_holder(key)}; "
                    "is a long run still writing it? Try again when it has finished."
                ) from None
            # the catalog is held for moments (info); anything else may be a long wait (warning)
            if not told:
                log.log(
                    logging.INFO if what == "catalog" else logging.WARNING,
                    "waiting for the %s lock held by %s",
                    what,
                    _holder(key),
                )
                told = True
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}".encode())
    _held[key] = (fd, 1)


@contextlib.contextmanager
def held_lock(path: str | Path, what: str, timeout_s: float = float("inf")) -> Iterator[None]:
    """An inter-process lock on `path` (the lock file beside it), waiting visibly while another
    process holds it (e.g. two builds of one home queue instead of both failing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _process_lock:
        _acquire_file_lock(path, timeout_s, what)
        try:
            yield
        finally:
            _release_file_lock(path)


def _release_file_lock(path: Path) -> None:
    key = str(_lock_path(path))
    fd, depth = _held[key]
    if depth > 1:
        _held[key] = (fd, depth - 1)
        return
    del _held[key]
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _holder(lock_file: str) -> str:
    try:
        return Path(lock_file).read_text().strip() or "another process"
    except OSError:
        return "another process"


def _connect(
    path: Path, read_only: bool, deadline: float, config: dict | None = None
) -> duckdb.DuckDBPyConnection:
    # Luna's writers take the file lock first; DuckDB's own lock still guards against other tools
    # (a DuckDB shell left open), so a held lock is retried until the deadline, then explained.
    told = False
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config or {})
        except duckdb.IOException as exc:
            message = str(exc)
            if "lock" not in message.lower():
                raise CorruptStoreError(f"catalog {path} cannot be opened: {message}") from None
            if time.monotonic() > deadline:
                raise BusyError(
                    f"catalog {path} is in use by another process ({message.splitlines()[0]}); "
                    "close that program (a DuckDB shell?) or wait for its run to finish"
                ) from None
            if not told:  # visible: another program (not a Luna process) holds DuckDB's own lock
                log.warning(
                    "catalog %s is held by another program (%s); waiting up to %.0fs — close "
                    "it to go on",
                    path,
                    message.splitlines()[0][:160],
                    max(0.0, deadline - time.monotonic()),
                )
                told = True
            time.sleep(0.1)
        except duckdb.Error as exc:
            raise CorruptStoreError(
                f"catalog {path} cannot be opened: {str(exc).splitlines()[0]}"
            ) from None


def stored_schema_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The schema version the catalog records; None for a new (empty) catalog."""
    if not con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_info'"
    ).fetchone()[0]:
        return None
    row = con.execute("SELECT value FROM schema_info WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else None
    except ValueError:
        raise CorruptStoreError(
            f"the catalog records schema version {row[0]!r}, not a number"
        ) from None


def ensure_schema(con: duckdb.DuckDBPyConnection, path: Path | str = "the catalog") -> None:
    """Create the tables of a new catalog, migrate an older one forward, refuse a newer one."""
    version = stored_schema_version(con)
    if version == SCHEMA_VERSION:
        _follow_parser_version(con)
        return
    if version is not None and version > SCHEMA_VERSION:
        raise LunaConfigError(
            f"catalog {path} has schema version {version}, but this Luna knows versions up to "
            f"{SCHEMA_VERSION}: "
            "it was written by a newer Luna; upgrade Luna to use it"
        )
    con.execute("BEGIN TRANSACTION")
    try:
        if version is None:
            for statement in SCHEMA:
                con.execute(statement)
        else:
            for step in range(version, SCHEMA_VERSION):
                if step not in MIGRATIONS:
                    raise LunaConfigError(
                        f"catalog {path} has schema version {version} and no migration from "
                        f"version {step} to {step + 1} exists; rebuild the catalog"
                    )
                for statement in MIGRATIONS[step]:
                    con.execute(statement)
                log.info("catalog %s migrated from schema version %d to %d", path, step, step + 1)
        con.execute(
            "INSERT OR REPLACE INTO schema_info VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)]
        )
        _prompts_view_of_this_parser(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _prompts_view_of_this_parser(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(PROMPTS_VIEW)
    con.execute("INSERT OR REPLACE INTO schema_info VALUES ('parser_version', ?)", [PARSER_VERSION])


def _follow_parser_version(con: duckdb.DuckDBPyConnection) -> None:
    """The `prompts` view computes each prompt's conditioning key, which names the parser's
    version: a catalog made under another version gets the view of this one, so the prompts whose
    rules changed are encoded again (the old rows retire by the data-version rules)."""
    row = con.execute("SELECT value FROM schema_info WHERE key = 'parser_version'").fetchone()
    if row is not None and row[0] == PARSER_VERSION:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        _prompts_view_of_this_parser(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info("catalog prompts view follows prompt parser version %s", PARSER_VERSION)


@contextlib.contextmanager
def open_catalog(
    path: str | Path,
    read_only: bool = False,
    timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    sandboxed: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to the catalog at `path`, schema ensured when writable; closed on exit.

    Every Luna process (ingest, the embedding assets running side by side under Dagster's
    multiprocess executor, the CLI) takes the catalog's file lock for the duration, so keep the
    block short: read what is needed, or commit one batch, and leave.

    `sandboxed` (read-only, no files or extensions outside the catalog) is for running SQL a person
    typed, such as a projector's subset filter: it can read the catalog and nothing else.
    """
    path = Path(path)
    read_only = read_only or sandboxed
    if read_only and not path.exists():
        raise NotBuiltError(f"no catalog at {path}: run `luna ingest` or `luna demo` first")
    path.parent.mkdir(parents=True, exist_ok=True)
    config = (
        {"enable_external_access": False, "autoload_known_extensions": False} if sandboxed else None
    )
    with _process_lock:
        _acquire_file_lock(path, timeout_s)
        try:
            con = _connect(path, read_only, time.monotonic() + timeout_s, config)
            try:
                if read_only:
                    version = stored_schema_version(con)
                    if version is not None and version > SCHEMA_VERSION:
                        raise LunaConfigError(
                            f"catalog {path} has schema version {version}, but this Luna knows "
                            "versions up to "
                            f"{SCHEMA_VERSION}: it was written by a newer Luna; upgrade Luna to "
                            "use it"
                        )
                else:
                    ensure_schema(con, path)
                yield con
            finally:
                con.close()
        finally:
            _release_file_lock(path)


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, **tables) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT (ROLLBACK on error), with Arrow tables registered under the given names."""
    con.execute("BEGIN TRANSACTION")
    try:
        for name, table in tables.items():
            con.register(name, table)
        yield con
        con.execute("COMMIT")
    except BaseException:
        # A COMMIT that failed (disk full…) may leave nothing to roll back: the rollback's own
        # error must never hide the cause.
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    finally:
        for name in tables:
            with contextlib.suppress(duckdb.Error):
                con.unregister(name)


# ---------------------------------------------------------------- health and summaries


def rows_without_content_hash(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Paths of image rows whose identity is missing or not a SHA-256 hex digest."""
    return [
        p
        for (p,) in con.execute(
            "SELECT path FROM images WHERE content_hash IS NULL OR NOT "
            "regexp_full_match(content_hash, '[0-9a-f]{64}') LIMIT 20"
        ).fetchall()
    ]


def quarantined_without_reason(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [
        p
        for (p,) in con.execute(
            "SELECT path FROM quarantine WHERE coalesce(trim(reason), '') = '' OR "
            "coalesce(trim(detail), '') = '' LIMIT 20"
        ).fetchall()
    ]


def sample_images(con: duckdb.DuckDBPyConnection, limit: int = 10) -> list[dict]:
    """A few catalogued images with their prompts, one per generator first, for a person to
    eyeball."""
    cursor = con.execute(
        """
        SELECT i.path, g.generator, i.format, i.width || 'x' || i.height AS size, g.seed,
               left(coalesce(g.prompt, ''), 80) AS prompt
        FROM images i JOIN generations g USING (content_hash)
        WHERE i.status = 'ok'
        QUALIFY row_number() OVER (PARTITION BY g.generator ORDER BY i.path) = 1
        ORDER BY g.generator LIMIT ?""",
        [limit],
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def quarantine_rows(con: duckdb.DuckDBPyConnection, limit: int = 50) -> list[dict]:
    cursor = con.execute(
        "SELECT path, reason, detail FROM quarantine ORDER BY reason, path LIMIT ?", [limit]
    )
    return [dict(zip(("path", "reason", "detail"), row)) for row in cursor.fetchall()]


def image_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Image files by status (ok, missing, quarantined), unique contents, and quarantine rows."""
    counts = {
        status: n
        for status, n in con.execute("SELECT status, count(*) FROM images GROUP BY 1").fetchall()
    }
    counts["unique"] = con.execute(
        "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'"
    ).fetchone()[0]
    counts["quarantine"] = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return counts


def library_files_digest(con: duckdb.DuckDBPyConnection) -> str:
    """What the library holds (each readable file's path, content hash and prompt syntax), as one
    digest: an ingest that changed nothing gives the same digest, so nothing downstream needs to
    run."""
    return con.execute("""SELECT coalesce(md5(string_agg(i.path || '|' || i.content_hash || '|'
                                                     || coalesce(g.prompt_syntax, ''), '\n' ORDER BY
                                                         i.path)), '')
                           FROM images i LEFT JOIN generations g USING (content_hash)
                           WHERE i.status = 'ok'""").fetchone()[0]


def vault_rows_digest(con: duckdb.DuckDBPyConnection, kind: str, store_key: str) -> str:
    """Which items have which rows in one vault store (`kind` vision or text), as one digest."""
    table, key = (
        ("vision_rows", "content_hash") if kind == "vision" else ("text_rows", "prompt_hash")
    )
    return con.execute(
        f"""SELECT coalesce(md5(string_agg({key} || '|' || "row", '\n' ORDER BY {key})), '')
                           FROM {table} WHERE store_key = ?""",
        [store_key],
    ).fetchone()[0]


def images_by_generator(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Catalogued image files and distinct prompts per generator, largest first."""
    cursor = con.execute("""
        SELECT g.generator, count(*) AS images, count(DISTINCT g.prompt) AS prompts
        FROM images i JOIN generations g USING (content_hash) WHERE i.status = 'ok'
        GROUP BY 1 ORDER BY 2 DESC, 1""")
    return [dict(zip(("generator", "images", "prompts"), row)) for row in cursor.fetchall()]


def vault_stores(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Each vault store with its committed rows, prompts spanning more than one chunk, prompts cut
    at 77 tokens (the literal rules) and recorded failures."""
    cursor = con.execute("""
        SELECT s.kind, s.store_key, s.path, s.shapes,
               coalesce(v.n, t.n, 0) AS rows, coalesce(t.truncated, 0) AS truncated,
                   coalesce(t.chunked, 0) AS chunked,
               (SELECT count(*) FROM embedding_failures f WHERE f.store_key = s.store_key) AS failed
        FROM vault_stores s
        LEFT JOIN (SELECT store_key, count(*) AS n FROM vision_rows GROUP BY 1) v USING (store_key)
        LEFT JOIN (SELECT store_key, count(*) AS n, sum((truncated AND chunks > 0)::INT) AS
            truncated,
                          sum((chunks > 1)::INT) AS chunked FROM text_rows GROUP BY 1) t
               USING (store_key)
        ORDER BY s.kind DESC, s.store_key""")
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
