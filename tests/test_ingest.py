"""Ingest: nothing lost, identity by content, incremental by stat, crash-safe by batch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb

from luna_core.ingest.filereader import read_file
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.ingest.scan import FileEntry
from luna_core.samples import SampleLibrary

INLINE = IngestOptions(workers=1, progress=False)


def rows(db: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def test_every_entry_ends_in_the_catalog_or_quarantine(
    sample_library: SampleLibrary, tmp_path: Path
):
    db = tmp_path / "catalog.duckdb"
    report = ingest(db, [str(sample_library.root)], INLINE)
    images = {
        p: (g, prompt, neg, seed, warnings + gwarn)
        for p, g, prompt, neg, seed, warnings, gwarn in rows(
            db,
            """
        SELECT i.path, g.generator, g.prompt, g.negative_prompt, g.seed, i.warnings, g.warnings
        FROM images i JOIN generations g USING (content_hash) WHERE i.status = 'ok'""",
        )
    }
    quarantine = {
        p: (reason, detail)
        for p, reason, detail in rows(db, "SELECT path, reason, detail FROM quarantine")
    }

    expected_paths = {str(f.path) for f in sample_library.files}
    assert set(images) | set(quarantine) == expected_paths, (
        "every file is ingested or quarantined, none lost"
    )
    assert not set(images) & set(quarantine)
    for f in sample_library.files:
        if f.quarantine_reason:
            assert quarantine[str(f.path)][0] == f.quarantine_reason, f.path.name
            assert quarantine[str(f.path)][1], "a reason a person can read"
            continue
        generator, prompt, negative, seed, warnings = images[str(f.path)]
        assert generator == f.generator, f.path.name
        if f.prompt is not None:
            assert (prompt, negative, seed) == (f.prompt, f.negative_prompt, f.seed), f.path.name
        if f.warning:
            assert any(f.warning in w for w in warnings), (f.path.name, warnings)
    assert report.new == len(images) and report.quarantined == len(quarantine)
    generators = {v[0] for v in images.values()}
    assert {
        "AUTOMATIC1111",
        "Forge",
        "ComfyUI",
        "InvokeAI",
        "NovelAI",
        "Fooocus",
        "SwarmUI",
        "Easy Diffusion",
        "Draw Things",
        "none",
    } <= generators


def test_long_prompts_and_prompt_reuse_are_present(sample_library: SampleLibrary, tmp_path: Path):
    db = tmp_path / "catalog.duckdb"
    ingest(db, [str(sample_library.root)], INLINE)
    (reused,) = rows(
        db,
        """SELECT count(*) FROM (SELECT prompt FROM generations WHERE prompt IS NOT NULL
                            GROUP BY prompt HAVING count(DISTINCT seed) > 1)""",
    )[0]
    (longest,) = rows(db, "SELECT max(length(prompt)) FROM generations")[0]
    assert reused >= 3
    assert longest > 400  # well past CLIP's 77 tokens


def test_same_bytes_under_two_names_are_one_image(sample_library: SampleLibrary, tmp_path: Path):
    db = tmp_path / "catalog.duckdb"
    original = sample_library.images[0].path
    twin = sample_library.root / "twin_folder" / "same_bytes.png"
    twin.parent.mkdir()
    os.link(original, twin)
    ingest(db, [str(sample_library.root)], INLINE)
    (hash_a,), (hash_b,) = rows(
        db,
        "SELECT content_hash FROM images WHERE path IN (?, ?) ORDER BY path",
        (str(original), str(twin)),
    )
    assert hash_a == hash_b
    assert rows(db, "SELECT count(*) FROM generations WHERE content_hash = ?", (hash_a,))[0][0] == 1


def test_second_ingest_reads_no_file_contents(sample_library: SampleLibrary, tmp_path: Path):
    db = tmp_path / "catalog.duckdb"
    ingest(db, [str(sample_library.root)], INLINE)
    opened: list[str] = []
    root = str(sample_library.root)

    def audit(event, args):
        if event == "open" and isinstance(args[0], str) and args[0].startswith(root):
            opened.append(args[0])

    sys.addaudithook(audit)
    try:
        report = ingest(db, [root], INLINE)
        assert opened == [], f"unchanged files were opened: {opened[:3]}"
        assert (report.new, report.changed, report.files_read) == (0, 0, 0)
        assert report.unchanged == len(sample_library.images)

        # One file changes: it alone is read again.
        changed = sample_library.images[3].path
        changed.write_bytes(sample_library.images[5].path.read_bytes())
        opened.clear()
        report = ingest(db, [root], INLINE)
        assert opened == [str(changed)]
        assert (report.new, report.changed, report.unchanged) == (
            0,
            1,
            len(sample_library.images) - 1,
        )
    finally:
        # audit hooks cannot be removed; later opens are ignored by the test
        opened.append("<done>")


def test_moved_file_keeps_identity_and_history(sample_library: SampleLibrary, tmp_path: Path):
    db = tmp_path / "catalog.duckdb"
    ingest(db, [str(sample_library.root)], INLINE)
    source = sample_library.images[2].path
    ((first_seen, content_hash),) = rows(
        db, "SELECT first_seen, content_hash FROM images WHERE path = ?", (str(source),)
    )
    target = sample_library.root / "moved" / source.name
    target.parent.mkdir()
    shutil.move(source, target)
    report = ingest(db, [str(sample_library.root)], INLINE)
    assert (report.new, report.missing, report.moved) == (1, 1, 1)
    ((status,),) = rows(db, "SELECT status FROM images WHERE path = ?", (str(source),))
    assert status == "missing"
    ((new_hash, new_first_seen, moved_from),) = rows(
        db, "SELECT content_hash, first_seen, moved_from FROM images WHERE path = ?", (str(target),)
    )
    assert (new_hash, new_first_seen, moved_from) == (content_hash, first_seen, str(source))


def test_deleted_file_is_marked_missing_and_its_row_kept(
    sample_library: SampleLibrary, tmp_path: Path
):
    db = tmp_path / "catalog.duckdb"
    ingest(db, [str(sample_library.root)], INLINE)
    gone = sample_library.images[1].path
    gone.unlink()
    report = ingest(db, [str(sample_library.root)], INLINE)
    assert report.missing == 1
    assert rows(db, "SELECT status FROM images WHERE path = ?", (str(gone),)) == [("missing",)]


def test_fixed_file_leaves_quarantine(sample_library: SampleLibrary, tmp_path: Path):
    db = tmp_path / "catalog.duckdb"
    ingest(db, [str(sample_library.root)], INLINE)
    empty = sample_library.root / "broken" / "empty.png"
    assert rows(db, "SELECT reason FROM quarantine WHERE path = ?", (str(empty),)) == [
        ("empty_file",)
    ]
    shutil.copyfile(sample_library.images[0].path, empty)
    ingest(db, [str(sample_library.root)], INLINE)
    assert rows(db, "SELECT count(*) FROM quarantine WHERE path = ?", (str(empty),)) == [(0,)]
    assert rows(db, "SELECT status FROM images WHERE path = ?", (str(empty),)) == [("ok",)]


def test_file_deleted_while_the_scan_runs(sample_library: SampleLibrary, tmp_path: Path):
    db = tmp_path / "catalog.duckdb"
    victim = sample_library.images[-1].path

    def delete_after_first_batch(done: int, total: int) -> None:
        if victim.exists():
            victim.unlink()

    report = ingest(
        db,
        [str(sample_library.root)],
        IngestOptions(workers=1, batch_size=4, progress=False),
        on_progress=delete_after_first_batch,
    )
    assert rows(db, "SELECT reason FROM quarantine WHERE path = ?", (str(victim),)) == [
        ("vanished",)
    ]
    assert report.new == len(sample_library.images) - 1
    # The next scan no longer sees it: the quarantine row goes, nothing else changes.
    ingest(db, [str(sample_library.root)], INLINE)
    assert rows(db, "SELECT count(*) FROM quarantine WHERE path = ?", (str(victim),)) == [(0,)]


def test_special_files_and_bad_names_are_quarantined(tmp_path: Path, sample_library: SampleLibrary):
    db = tmp_path / "catalog.duckdb"
    os.mkfifo(sample_library.root / "a_pipe.png")
    bad_name = os.path.join(os.fsencode(sample_library.root), b"caf\xe9.png")
    with open(bad_name, "wb") as fh:
        fh.write(sample_library.images[0].path.read_bytes())
    ingest(db, [str(sample_library.root)], INLINE)  # must not block on the FIFO
    reasons = dict(rows(db, "SELECT reason, count(*) FROM quarantine GROUP BY 1"))
    assert reasons["not_a_file"] == 1
    assert reasons["bad_filename"] == 1
    ((detail,),) = rows(db, "SELECT detail FROM quarantine WHERE reason = 'bad_filename'")
    assert "rename" in detail


def _without_file_permission_bypass() -> None:
    """In the child before exec: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root obeys
    file modes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_unreadable_file_is_quarantined(sample_library: SampleLibrary, tmp_path: Path):
    """Real permissions: the ingest runs in a child process that cannot bypass file modes, even
    as root."""
    secret = sample_library.root / "secret.png"
    shutil.copyfile(sample_library.images[0].path, secret)
    secret.chmod(0)
    db = tmp_path / "catalog.duckdb"
    script = (
        f"from luna_core.ingest.run import ingest, IngestOptions; "
        f"ingest({str(db)!r}, [{str(sample_library.root)!r}], IngestOptions(workers=1, "
        "progress=False))"
    )
    preexec = _without_file_permission_bypass if os.geteuid() == 0 else None
    subprocess.run([sys.executable, "-c", script], check=True, preexec_fn=preexec)
    assert rows(db, "SELECT reason, detail FROM quarantine WHERE path = ?", (str(secret),)) == [
        ("permission_denied", "the file cannot be read: permission denied")
    ]
    assert rows(db, "SELECT count(*) FROM images WHERE status = 'ok'")[0][0] == len(
        sample_library.images
    )


def test_killed_ingest_keeps_committed_batches_and_the_rerun_completes(
    sample_library: SampleLibrary, tmp_path: Path
):
    db = tmp_path / "catalog.duckdb"
    script = textwrap.dedent(f"""
        import os, signal
        from luna_core.ingest.run import ingest, IngestOptions
        def crash(done, total):
            if done >= 12:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no atexit: a real crash
        options = IngestOptions(workers=1, batch_size=6, progress=False)
        ingest({str(db)!r}, [{str(sample_library.root)!r}], options, crash)
    """)
    result = subprocess.run([sys.executable, "-c", script])
    assert result.returncode == -9
    committed = rows(db, "SELECT count(*) FROM images")[0][0]
    assert 0 < committed < len(sample_library.images)
    report = ingest(db, [str(sample_library.root)], INLINE)
    assert report.unchanged == committed
    assert rows(db, "SELECT count(*), count(DISTINCT path) FROM images WHERE status = 'ok'")[0] == (
        len(sample_library.images),
        len(sample_library.images),
    )
    orphans = rows(
        db, "SELECT count(*) FROM images i ANTI JOIN generations g USING (content_hash)"
    )[0][0]
    assert orphans == 0


def test_worker_processes_give_the_same_catalog_as_inline(
    sample_library: SampleLibrary, tmp_path: Path
):
    inline_db, pool_db = tmp_path / "inline.duckdb", tmp_path / "pool.duckdb"
    ingest(inline_db, [str(sample_library.root)], INLINE)
    ingest(
        pool_db,
        [str(sample_library.root)],
        IngestOptions(workers=2, progress=False, batch_size=16, min_files_for_pool=0),
    )
    query = (
        "SELECT i.path, i.content_hash, g.generator, g.prompt "
        "FROM images i JOIN generations g USING (content_hash) ORDER BY 1"
    )
    assert rows(inline_db, query) == rows(pool_db, query)
    q = "SELECT path, reason FROM quarantine ORDER BY 1"
    assert rows(inline_db, q) == rows(pool_db, q)


def test_roots_are_scoped(sample_library: SampleLibrary, tmp_path: Path):
    """Scanning root B never marks root A's images missing."""
    db = tmp_path / "catalog.duckdb"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copyfile(sample_library.images[0].path, other / "one.png")
    ingest(db, [str(sample_library.root)], INLINE)
    report = ingest(db, [str(other)], INLINE)
    assert report.missing == 0
    assert rows(db, "SELECT count(*) FROM images WHERE status = 'missing'") == [(0,)]


def test_read_file_on_vanished_entry():
    result = read_file(
        FileEntry("/nonexistent/luna/x.png", "/nonexistent", 1, 1), IngestOptions().limits
    )
    assert (result.reason, bool(result.detail)) == ("vanished", True)


def test_unavailable_root_leaves_its_rows_alone_and_a_remount_reads_nothing(
    sample_library: SampleLibrary, tmp_path: Path
):
    db = tmp_path / "catalog.duckdb"
    root = str(sample_library.root)
    ingest(db, [root], INLINE)
    unmounted = sample_library.root.with_name("unmounted")
    sample_library.root.rename(unmounted)
    report = ingest(db, [root], INLINE)
    assert report.unavailable_roots == [root] and report.missing == 0
    assert rows(db, "SELECT count(*) FROM images WHERE status = 'missing'") == [(0,)]

    # The files vanish for one full scan (root present, files gone), then come back unchanged.
    sample_library.root.mkdir()
    assert ingest(db, [root], INLINE).missing == len(sample_library.images)
    sample_library.root.rmdir()
    unmounted.rename(sample_library.root)
    report = ingest(db, [root], INLINE)
    assert (report.new, report.changed, report.unchanged) == (0, 0, len(sample_library.images))
    assert rows(db, "SELECT count(*) FROM images WHERE status = 'ok'") == [
        (len(sample_library.images),)
    ]
