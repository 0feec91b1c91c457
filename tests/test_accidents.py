"""Accidents a person meets: a full disk, a killed ingest, a cleanup whose own error would hide
the cause."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import duckdb
import pytest

from luna_cli.main import main
from luna_core.catalog.connection import transaction


def test_a_failed_commit_is_reported_not_hidden_by_the_rollback():
    class FullDisk:
        def execute(self, sql):
            if sql == "COMMIT":
                raise duckdb.IOException(
                    'Could not write file "catalog.duckdb.wal": No space left on device'
                )
            if sql == "ROLLBACK":
                raise duckdb.TransactionException("cannot rollback - no transaction is active")

        def register(self, *args):
            pass

        def unregister(self, *args):
            pass

    with pytest.raises(duckdb.IOException, match="No space left on device"):
        with transaction(FullDisk()):
            pass


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a 1 MB tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_line_and_a_nonzero_exit(small_disk, sample_library, capsys):
    code = main(
        ["ingest", str(sample_library.root), "--home", str(small_disk / "home"), "--workers", "1"]
    )
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert (
        code == 6
        and len(lines) == 1
        and "No space left on device" in lines[0]
        and "Traceback" not in err
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_killed_ingest_leaves_no_reader_process(sample_library, tmp_path):
    """SIGKILL an ingest while its reader processes work: they end with it (no orphan keeps
    reading)."""
    script = textwrap.dedent(f"""
        from luna_core.ingest.run import IngestOptions, ingest
        print("start", flush=True)
        ingest({str(tmp_path / "c.duckdb")!r}, [{str(sample_library.root)!r}],
               IngestOptions(workers=2, progress=False, batch_size=4, min_files_for_pool=0))
        print("finished", flush=True)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "start"
        deadline, pause = time.monotonic() + 120, threading.Event()
        workers: list[int] = []
        while time.monotonic() < deadline and child.poll() is None and len(workers) < 2:
            workers = (
                [
                    p
                    for p in _children(child.pid)
                    if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text().replace("\\0", " ")
                ]
                if child.poll() is None
                else []
            )
            pause.wait(0.01)  # a bounded poll of /proc, not a spin
        # An ingest that ends before its readers are seen proves nothing: a failure, never a skip.
        assert child.poll() is None, (
            "the ingest finished before its reader processes could be observed"
        )
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        # the parent-death signal is delivered by the kernel, at once
        deadline = time.monotonic() + 60
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = [p for p in workers if _running(p)]
            pause.wait(0.01)
        assert workers and not alive, f"reader processes {alive} outlived the killed ingest"
    finally:
        if child.poll() is None:
            child.kill()


def test_a_second_build_of_a_home_waits_for_the_first(tmp_path):
    """Two builds of one home queue behind one lock, the second saying whom it waits for."""
    from locking import hold_in_child, waits_then_gets

    from luna_core.catalog.connection import held_lock

    lock = tmp_path / "home" / "build"
    holder = hold_in_child(
        "from luna_core.catalog.connection import held_lock\n", f"held_lock({str(lock)!r}, 'build')"
    )
    try:
        logged, blocked, got_it = waits_then_gets(
            holder, lambda: held_lock(lock, "build"), "waiting for the build lock held by pid"
        )
        assert logged and blocked, (logged, blocked)
        assert got_it
    finally:
        holder.communicate(timeout=60)


def test_a_killed_dagster_run_is_marked_failed_not_left_started(tiny_home):
    """SIGKILL a materialization on the home's own Dagster instance: the run stays STARTED until
    Luna notices its process is gone and marks it failed (what `luna build` and `luna ui` do
    first)."""
    import signal as signals

    import dagster as dg
    from dagster._daemon.auto_run_reexecution.auto_run_reexecution import should_retry

    from luna_assets.definitions import build_definitions
    from luna_assets.runs import DEAD_RUN_MONITOR, fail_dead_runs

    script = textwrap.dedent(f"""
        import sys, dagster as dg
        import luna_core.models.encoders as encoders
        from luna_assets.definitions import build_definitions
        def stuck(self, pixels):
            print("stuck", flush=True)
            sys.stdin.readline()
        encoders.VisionEncoder.embed_pixels = stuck
        defs = build_definitions({str(tiny_home.root)!r})
        job = defs.resolve_implicit_global_asset_job_def()
        instance = dg.DagsterInstance.from_config({str(tiny_home.dagster_home)!r})
        selection = [dg.AssetKey("vision_embeddings")]
        job.execute_in_process(asset_selection=selection, instance=instance)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert next(
            (line.strip() for line in iter(child.stdout.readline, "") if line.strip() == "stuck"),
            None,
        )
        child.send_signal(signals.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    instance = dg.DagsterInstance.from_config(str(tiny_home.dagster_home))
    started = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])
    )
    assert len(started) == 1, "the killed run is left STARTED"
    run_id = started[0].dagster_run.run_id
    assert [
        s.run_id for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots
    ] == [run_id], "the dead run still holds the gpu pool's one slot"
    assert len(fail_dead_runs(instance)) == 1
    failed = instance.get_run_by_id(run_id)
    assert failed.status == dg.DagsterRunStatus.FAILURE
    assert instance.event_log_storage.get_concurrency_info("gpu").claimed_slots == [], (
        "its slot was freed"
    )
    assert should_retry(failed, instance), (
        "run retries (retry_on_asset_or_op_failure: false) re-launch it"
    )
    assert fail_dead_runs(instance) == []
    sensor = build_definitions(str(tiny_home.root)).resolve_sensor_def(DEAD_RUN_MONITOR)
    assert (
        "every STARTED run has a live process"
        in sensor(dg.build_sensor_context(instance=instance)).skip_message
    )


def test_a_catalog_held_by_another_program_is_a_visible_wait_then_a_clear_error(tmp_path, caplog):
    import logging

    from luna_core.catalog.connection import open_catalog
    from luna_core.errors import BusyError

    db = tmp_path / "c.duckdb"
    with open_catalog(db):
        pass
    shell = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, duckdb
        con = duckdb.connect({str(db)!r})  # a DuckDB shell left open: DuckDB's own lock, not Luna's
        print("open", flush=True)
        sys.stdin.readline()
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert shell.stdout.readline().strip() == "open"
        with caplog.at_level(logging.WARNING, logger="luna_core.catalog.connection"):
            with pytest.raises(BusyError, match="in use by another process"):
                with open_catalog(db, timeout_s=0.5):
                    pass
        assert any("held by another program" in r.getMessage() for r in caplog.records)
    finally:
        shell.communicate("done\n", timeout=60)
