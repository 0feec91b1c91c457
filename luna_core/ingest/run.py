"""Ingest library roots into the catalog, incrementally.

A file whose (path, size, mtime) is unchanged since the last scan is not opened: the scan is stat
calls only. New and changed files are read once, hashed (SHA-256 of the bytes: the image's
identity) and their container and metadata parsed, in worker processes. Results are committed in
batches, one transaction each, so a killed run keeps what it committed and the rerun goes on from
there; files gone since the last full scan are marked `missing` only when a scan completes.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import multiprocessing
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from tqdm.auto import tqdm

from luna_core.catalog.connection import open_catalog
from luna_core.containers.probe import ProbeLimits
from luna_core.ingest.commit import (
    IngestReport,
    _utcnow,
    commit_batch,
    finish_scan,
)
from luna_core.ingest.filereader import IngestedFile, QuarantinedFile, read_chunk
from luna_core.ingest.scan import DEFAULT_IGNORE, FileEntry, ScanProblem, ScanStats, walk_root
from luna_core.prompts.syntax import syntax_case_sql

log = logging.getLogger(__name__)

BATCH_SIZE = 512


@dataclass
class IngestOptions:
    limits: ProbeLimits = field(default_factory=ProbeLimits)
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    workers: int = 0  # 0: one per core; 1: in this process (no pool)
    batch_size: int = BATCH_SIZE
    progress: bool = True
    # fewer files are read in this process: a pool's start-up would cost more
    min_files_for_pool: int = 64
    writer_syntax: tuple[
        tuple[str, str], ...
    ] = ()  # (generator, prompt syntax) overriding the writers' own


def _chunks(items: list[FileEntry], size: int) -> Iterable[list[FileEntry]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _die_with_parent(parent: int) -> None:
    """A reader process ends when the ingest that started it dies (even by SIGKILL): Linux's
    parent-death signal; elsewhere the pool's own shutdown is all there is."""

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


class _Processor:
    """Runs `read_file` over entries, in this process or in a pool of worker processes."""

    def __init__(self, workers: int):
        self.workers = workers if workers > 0 else max(1, os.cpu_count() or 1)
        self.pool: concurrent.futures.ProcessPoolExecutor | None = None

    def map(
        self, entries: list[FileEntry], limits: ProbeLimits, chunk: int, min_files_for_pool: int
    ) -> Iterable[list[IngestedFile | QuarantinedFile]]:
        if self.workers == 1 or len(entries) < min_files_for_pool:
            for part in _chunks(entries, chunk):
                yield read_chunk(part, limits)
            return
        # spawn: forking a process that holds DuckDB or Dagster threads is unsafe.
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        try:
            # Small tasks keep every worker busy; results come back in order, batch by batch.
            parts = list(_chunks(entries, max(8, min(64, chunk // self.workers))))
            futures = [self.pool.submit(read_chunk, part, limits) for part in parts]
            pending: list[IngestedFile | QuarantinedFile] = []
            for future in futures:
                pending.extend(future.result())
                if len(pending) >= chunk:
                    yield pending
                    pending = []
            if pending:
                yield pending
        finally:
            self.pool.shutdown(cancel_futures=True)


def _storable(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def apply_writer_syntax(catalog_path: str | Path, overrides: dict[str, str]) -> int:
    """Every generation's prompt syntax from its generator, overrides applied (a changed setting
    reaches generations catalogued earlier); how many changed."""
    case = syntax_case_sql(overrides)
    with open_catalog(catalog_path) as con:
        return len(
            con.execute(
                f"UPDATE generations SET prompt_syntax = {case} "
                f"WHERE prompt_syntax IS DISTINCT FROM {case} RETURNING 1"
            ).fetchall()
        )


def ingest(
    catalog_path: str | Path,
    roots: list[str],
    options: IngestOptions | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IngestReport:
    """Bring the catalog up to date with the files under `roots`; returns what changed."""

    options = options or IngestOptions()
    roots = [os.path.abspath(r) for r in roots]
    started = time.perf_counter()
    run_started = _utcnow()
    report = IngestReport(run_id=uuid.uuid4().hex, roots=roots)
    with open_catalog(catalog_path) as con:  # held briefly: other Luna processes share the catalog
        con.execute(
            "INSERT INTO ingest_runs VALUES ($run, $now, NULL, $roots, NULL)",
            {"run": report.run_id, "now": run_started, "roots": roots},
        )
        known = {
            path: (size, mtime, status)
            for path, size, mtime, status in con.execute(
                # A missing file whose generation was retired meanwhile reads as 'retired': read
                # again.
                """SELECT path, size_bytes, mtime_ns,
                          CASE WHEN status = 'missing' AND content_hash NOT IN (SELECT content_hash
                              FROM generations)
                               THEN 'retired' ELSE status END
                   FROM images WHERE list_contains($roots, root)""",
                {"roots": roots},
            ).fetchall()
        }
        known_bad = {
            path: (size, mtime)
            for path, size, mtime in con.execute(
                "SELECT path, size_bytes, mtime_ns FROM quarantine WHERE list_contains($roots, "
                "root)",
                {"roots": roots},
            ).fetchall()
        }
        known_hashes = {
            h for (h,) in con.execute("SELECT content_hash FROM generations").fetchall()
        }

    stats = ScanStats()
    to_read: list[FileEntry] = []
    unchanged_paths: list[str] = []
    unchanged_bad: list[str] = []
    problems: list[QuarantinedFile] = []
    repeated_problems: set[str] = set()  # problems already recorded by an earlier scan
    for root in roots:
        if not os.path.isdir(root):
            # An unmounted drive is not a deleted library: leave its rows as they are.
            log.warning(
                "library root %s is not available; its catalog rows are left unchanged", root
            )
            report.unavailable_roots.append(root)
            continue
        for item in walk_root(root, options.ignore, stats):
            if isinstance(item, ScanProblem) or not _storable(item.path):
                if isinstance(item, ScanProblem):
                    problem = QuarantinedFile(item.path, item.root, item.reason, item.detail)
                else:
                    shown = item.path.encode("utf-8", "surrogateescape").decode(
                        "utf-8", "backslashreplace"
                    )
                    problem = QuarantinedFile(
                        shown,
                        item.root,
                        "bad_filename",
                        "the file name is not valid UTF-8; rename the file",
                        item.size,
                        item.mtime_ns,
                    )
                if known_bad.get(problem.path) == (problem.size, problem.mtime_ns):
                    repeated_problems.add(problem.path)
                problems.append(problem)
                continue
            previous = known.get(item.path)
            # A 'missing' file back with the same size and mtime (a drive remounted) is not re-read
            # while its generation is still catalogued.
            if (
                previous
                and previous[2] in ("ok", "missing")
                and previous[:2] == (item.size, item.mtime_ns)
            ):
                unchanged_paths.append(item.path)
            elif known_bad.get(item.path) == (item.size, item.mtime_ns):
                unchanged_bad.append(item.path)  # still the same bad file: not read again
            else:
                to_read.append(item)
    report.ignored = stats.ignored
    report.unchanged = len(unchanged_paths)
    log.info(
        "scanned %d folders: %d unchanged, %d to read, %d problems",
        stats.directories,
        len(unchanged_paths),
        len(to_read),
        len(problems),
    )

    now = _utcnow()
    if problems:
        commit_batch(catalog_path, problems, now, known_hashes)
        report.quarantined += sum(1 for p in problems if p.path not in repeated_problems)
    processor = _Processor(options.workers)
    bar = tqdm(
        total=len(to_read),
        unit="file",
        desc="ingest",
        disable=not options.progress or not to_read,
        mininterval=0.5,
    )
    done = 0
    seen_quarantine = list(unchanged_bad) + [p.path for p in problems]
    try:  # the bar is closed whatever happens, so an error starts on a line of its own
        for results in processor.map(
            to_read, options.limits, options.batch_size, options.min_files_for_pool
        ):
            commit_batch(catalog_path, results, _utcnow(), known_hashes)
            for result in results:
                if isinstance(result, IngestedFile):
                    report.files_read += 1
                    report.bytes_read += result.size
                    previous = known.get(result.path)
                    if previous is None:
                        report.new += 1
                    else:
                        report.changed += 1
                else:
                    report.quarantined += 1
                    if result.size is not None:
                        report.files_read += 1
                    seen_quarantine.append(result.path)
            done += len(results)
            bar.update(len(results))
            if on_progress:
                on_progress(done, len(to_read))
    finally:
        bar.close()
    scanned = [r for r in roots if r not in report.unavailable_roots]
    finish_scan(
        catalog_path, scanned, unchanged_paths, seen_quarantine, _utcnow(), report, run_started
    )
    report.syntax_changed = apply_writer_syntax(catalog_path, dict(options.writer_syntax))
    report.seconds = time.perf_counter() - started
    log.info("ingest finished in %.1fs: %s", report.seconds, report.counts())
    return report
