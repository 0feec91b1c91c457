"""The vault embedded by shards in worker processes against the single-store path, in one run.

    .venv/bin/python benchmarks/bench_scale.py --images 600 --shards 4 --celery

The same ingested library, three ways (tiny profile, CPU): the single-store path in one process; the
shards one after another in one worker process; the shards split over two worker processes at once.
Prints wall time, images/s, the commit step's time, and the overhead of the sharded path on one
worker against the single-store path, and what N machines would give for a library of `--project`
images at this run's per-worker rate. With `--celery`, the shards also run as Dagster partition runs
whose steps go to one, then two `luna worker` processes (Redis started here). Every worker reads
the catalog but never writes it, which is what lets them run on other machines too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A worker embeds the shards given as arguments, one after another; with none, the single-store
# path.
WORKER = textwrap.dedent("""
    import sys
    from luna_core.models.profiles import resolve_profile
    from luna_core.home.home import LunaHome
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts
    from luna_core.vault.segments import Shard
    home = LunaHome.resolve(sys.argv[1])
    profile = resolve_profile("tiny", home.models_dir)
    for shard in [Shard.parse(spec) for spec in sys.argv[2:]] or [None]:
        embed_images(home, profile, EmbedOptions(progress=False), shard=shard)
        embed_prompts(home, profile, EmbedOptions(progress=False), shard=shard)
""")


# One partition's run through Dagster, its steps sent to the Celery workers by the home's executor.
RUN_PARTITION = textwrap.dedent("""
    import sys
    import dagster as dg
    from dagster_project.definitions import luna_build_all_job
    from luna_assets.defs.vault.assets import TEXT_CONDITIONINGS, VISION_EMBEDDINGS
    result = dg.execute_job(dg.reconstructable(luna_build_all_job), dg.DagsterInstance.get(),
                            tags={"dagster/partition": sys.argv[1]},
                            asset_selection=[VISION_EMBEDDINGS, TEXT_CONDITIONINGS])
    sys.exit(0 if result.success else 1)
""")


def _started(command: list[str], ready: str, env: dict) -> subprocess.Popen:
    """A server or worker, once it printed `ready` (its output is drained by a thread from then
    on)."""
    import threading

    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if ready in line:
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            return process
    raise SystemExit(f"{command[0]} stopped before it was ready:\n" + "".join(seen[-20:]))


def _stop(process: subprocess.Popen) -> None:
    import signal

    os.killpg(process.pid, signal.SIGTERM)
    process.wait(60)


def _run_on_celery(home, keys: list[str], workers: int) -> float:
    """Every partition's run at once, their steps on `workers` Celery workers (Redis started
    here)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, LUNA_HOME=str(home.root), DAGSTER_HOME=str(home.dagster_home))
    redis = _started(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        "Ready to accept connections",
        env,
    )
    started_workers = []
    try:
        home.set_setting("scale", "celery_broker", f"redis://127.0.0.1:{port}/0")
        home.set_operations_setting("gpu_slots", workers)
        home.ensure()
        import dagster as dg

        # storage made once, not by 4 at once
        dg.DagsterInstance.from_config(str(home.dagster_home)).get_runs(limit=1)
        luna = str(Path(sys.executable).with_name("luna"))
        for n in range(workers):
            started_workers.append(
                _started(
                    [luna, "worker", "--home", str(home.root), "--name", f"bench{n}@%h"],
                    " ready.",
                    env,
                )
            )
        started, started_at = time.perf_counter(), time.time()
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", RUN_PARTITION, key],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for key in keys
        ]
        if any(run.wait() != 0 for run in runs):
            raise SystemExit("a partition's run failed")
        wall = time.perf_counter() - started
        _print_timeline(home, started_at, wall)
        return wall
    finally:
        for process in started_workers + [redis]:
            _stop(process)


def _print_timeline(home, started_at: float, wall: float) -> None:
    """Where the Celery runs' time went, from their event logs: the run processes' start (Python,
    Dagster and the definitions imported), the wait for the first step, the steps' own time on
    the workers, and each run's end after its last step."""
    import dagster as dg

    kinds = dg.DagsterEventType
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    starts, waits, steps, ends = [], [], [], []
    for run in instance.get_runs():
        times: dict = {}
        step_start: dict = {}
        for record in instance.all_logs(run.run_id):
            event = record.dagster_event
            if event is None:
                continue
            kind, at = event.event_type_value, record.timestamp
            times.setdefault(kind, at)
            if kind == kinds.STEP_START.value:
                step_start[event.step_key] = at
            elif kind == kinds.STEP_SUCCESS.value:
                steps.append(at - step_start[event.step_key])
                times["last step"] = at
        run_start = times[kinds.RUN_START.value]
        starts.append(run_start - started_at)
        waits.append(times[kinds.STEP_START.value] - run_start)
        ends.append(times[kinds.RUN_SUCCESS.value] - times["last step"])

    def span(values: list) -> str:
        return f"{min(values):.1f}-{max(values):.1f} s"

    print(
        f"    timeline: run processes up {span(starts)} after launch; first step started "
        f"{span(waits)} after its run; {len(steps)} steps took {sum(steps):.1f} s on the workers "
        f"({', '.join(f'{s:.1f}' for s in sorted(steps))}); runs ended {span(ends)} after their "
        f"last step; wall {wall:.1f} s",
        flush=True,
    )


def _run(home: Path, groups: list[list[str]]) -> float:
    started = time.perf_counter()
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(home), *group]) for group in groups
    ]
    if any(w.wait() != 0 for w in workers):
        raise SystemExit("a worker failed")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument(
        "--celery",
        action="store_true",
        help="also run the shards as Dagster partition runs on 1 and 2 Celery workers (needs "
        "redis-server)",
    )
    parser.add_argument(
        "--project", type=int, default=500_000, help="library size the N-machine projection is for"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from luna_core.home.home import LunaHome
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.models.profiles import resolve_profile
    from luna_core.models.tiny import ensure_tiny_models
    from luna_core.samples import make_sample_library
    from luna_core.vault.manifests import commit_segments

    work = Path(tempfile.mkdtemp(prefix="luna-bench-scale-"))
    library = make_sample_library(
        work / "library", args.images, seed=3, size=(args.size, args.size)
    )
    template = LunaHome.resolve(work / "template").ensure()
    ensure_tiny_models()  # trained once per machine, shared by every home
    template.add_roots([library.root])
    template.set_model_profile("tiny")
    ingest(template.catalog_path, [str(library.root)], IngestOptions(progress=False))
    profile = resolve_profile("tiny", template.models_dir)

    def fresh(name: str) -> LunaHome:
        target = work / name
        shutil.copytree(template.root, target, symlinks=True)
        return LunaHome.resolve(target)

    import duckdb

    with duckdb.connect(str(template.catalog_path), read_only=True) as con:
        images = con.execute(
            "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'"
        ).fetchone()[0]
    shards = [f"{i}/{args.shards}" for i in range(args.shards)]
    figures = {"images": images, "shards": args.shards, "size": args.size}
    rows = []

    def record(name: str, home, wall: float, sharded: bool) -> None:
        commit = 0.0
        if sharded:
            started = time.perf_counter()
            done = commit_segments(home, profile)
            commit = time.perf_counter() - started
            assert done["vision"] == images, done
        rows.append(
            {"path": name, "wall_s": wall, "images_per_s": images / wall, "commit_s": commit}
        )
        print(
            f"{name:26s} wall {wall:6.1f} s  {images / wall:6.1f} images/s  commit {commit:5.2f} s",
            flush=True,
        )

    for name, groups in (
        ("single store, 1 process", [[]]),
        (f"{args.shards} shards, 1 worker", [shards]),
        (f"{args.shards} shards, 2 workers", [shards[0::2], shards[1::2]]),
    ):
        home = fresh(name.replace(" ", "_").replace(",", ""))
        record(name, home, _run(home.root, groups), sharded=groups != [[]])
    if args.celery:  # the same shards as Dagster partition runs, their steps on Celery workers
        if not shutil.which("redis-server"):
            raise SystemExit("--celery needs Debian's redis-server")
        from luna_core.vault.segments import shard_keys

        for workers in (1, 2):
            name = f"{args.shards} shards, Celery, {workers} worker{'s' if workers > 1 else ''}"
            home = fresh(name.replace(" ", "_").replace(",", ""))
            home.set_vault_shards(args.shards)
            record(name, home, _run_on_celery(home, shard_keys(args.shards), workers), sharded=True)
    if args.celery:
        one_worker = next(r for r in rows if r["path"] == f"{args.shards} shards, 1 worker")
        on_celery = next(r for r in rows if r["path"] == f"{args.shards} shards, Celery, 1 worker")
        figures["celery_overhead_s_per_shard"] = per_shard = (
            on_celery["wall_s"] - one_worker["wall_s"]
        ) / args.shards
        print(
            f"celery overhead: {per_shard:.1f} s a shard (Celery, 1 worker against the shards "
            "one after another in one worker process; goal at most 1 s)"
        )
    overhead = (rows[1]["wall_s"] + rows[1]["commit_s"]) / rows[0]["wall_s"] - 1
    speedup = (rows[1]["wall_s"] + rows[1]["commit_s"]) / (rows[2]["wall_s"] + rows[2]["commit_s"])
    print(
        f"sharded path on 1 worker vs single store: {overhead:+.1%} (goal under +10 %); "
        f"2 workers vs 1: {speedup:.2f}x on this {os.cpu_count()}-core machine"
    )
    # N machines, each embedding its shards at the one-worker rate measured above; one commit at the
    # end.
    per_worker = images / rows[1]["wall_s"]
    commit_per_image = rows[1]["commit_s"] / images
    projection = []
    print(
        f"projection for {args.project:,} images (this run's rates: {per_worker:.1f} images/s a "
        "worker, "
        f"commit {commit_per_image * 1e6:.0f} us an image):"
    )
    for machines in (1, 2, 4, 8, 16):
        embed_s = args.project / (machines * per_worker)
        commit_s = args.project * commit_per_image
        projection.append({"machines": machines, "embed_s": embed_s, "commit_s": commit_s})
        print(
            f"  {machines:2d} machine(s): embed {embed_s / 60:7.1f} min + commit {commit_s:5.1f} s",
            flush=True,
        )
    figures.update(rows=rows, overhead=overhead, two_worker_speedup=speedup, projection=projection)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
