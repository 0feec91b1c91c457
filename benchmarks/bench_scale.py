"""The vault embedded by shards in worker processes against the single-store path, in one run.

    .venv/bin/python benchmarks/bench_scale.py --images 600 --shards 4

The same ingested library, three ways (tiny profile, CPU): the single-store path in one process; the
shards one after another in one worker process; the shards split over two worker processes at once.
Prints wall time, images/s, the commit step's time, and the overhead of the sharded path on one
worker against the single-store path, and what N machines would give for a library of `--project`
images at this run's per-worker rate. The workers here are plain processes on this machine; each
reads the catalog but never writes it, which is what lets them run on other machines too.
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

# A worker embeds the shards given as arguments, one after another; with none, the single-store path.
WORKER = textwrap.dedent("""
    import sys
    from luna_core.models.profiles import resolve_profile
    from luna_core.settings import LunaHome
    from luna_core.vault.embed import EmbedOptions, embed_images, embed_prompts
    from luna_core.vault.segments import Shard
    home = LunaHome.resolve(sys.argv[1])
    profile = resolve_profile("tiny", home.models_dir)
    for shard in [Shard.parse(spec) for spec in sys.argv[2:]] or [None]:
        embed_images(home, profile, EmbedOptions(progress=False), shard=shard)
        embed_prompts(home, profile, EmbedOptions(progress=False), shard=shard)
""")


def _run(home: Path, groups: list[list[str]]) -> float:
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(home), *group]) for group in groups]
    if any(w.wait() != 0 for w in workers):
        raise SystemExit("a worker failed")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--project", type=int, default=500_000, help="library size the N-machine projection is for")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from luna_core.ingest import IngestOptions, ingest
    from luna_core.models.profiles import resolve_profile
    from luna_core.models.tiny import ensure_tiny_models
    from luna_core.samples import make_sample_library
    from luna_core.settings import LunaHome
    from luna_core.vault.embed import commit_segments

    work = Path(tempfile.mkdtemp(prefix="luna-bench-scale-"))
    library = make_sample_library(work / "library", args.images, seed=3, size=(args.size, args.size))
    template = LunaHome.resolve(work / "template").ensure()
    ensure_tiny_models(template.models_dir / "tiny")
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
        images = con.execute("SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'").fetchone()[0]
    shards = [f"{i}/{args.shards}" for i in range(args.shards)]
    figures = {"images": images, "shards": args.shards, "size": args.size}
    rows = []
    for name, groups in (("single store, 1 process", [[]]),
                         (f"{args.shards} shards, 1 worker", [shards]),
                         (f"{args.shards} shards, 2 workers", [shards[0::2], shards[1::2]])):
        home = fresh(name.replace(" ", "_").replace(",", ""))
        wall = _run(home.root, groups)
        commit = 0.0
        if groups != [[]]:
            started = time.perf_counter()
            done = commit_segments(home, profile)
            commit = time.perf_counter() - started
            assert done["vision"] == images, done
        rows.append({"path": name, "wall_s": wall, "images_per_s": images / wall, "commit_s": commit})
        print(f"{name:26s} wall {wall:6.1f} s  {images / wall:6.1f} images/s  commit {commit:5.2f} s", flush=True)
    overhead = (rows[1]["wall_s"] + rows[1]["commit_s"]) / rows[0]["wall_s"] - 1
    speedup = (rows[1]["wall_s"] + rows[1]["commit_s"]) / (rows[2]["wall_s"] + rows[2]["commit_s"])
    print(f"sharded path on 1 worker vs single store: {overhead:+.1%} (goal under +10 %); "
          f"2 workers vs 1: {speedup:.2f}x on this {os.cpu_count()}-core machine")
    # N machines, each embedding its shards at the one-worker rate measured above; one commit at the end.
    per_worker = images / rows[1]["wall_s"]
    commit_per_image = rows[1]["commit_s"] / images
    projection = []
    print(f"projection for {args.project:,} images (this run's rates: {per_worker:.1f} images/s a worker, "
          f"commit {commit_per_image * 1e6:.0f} us an image):")
    for machines in (1, 2, 4, 8, 16):
        embed_s = args.project / (machines * per_worker)
        commit_s = args.project * commit_per_image
        projection.append({"machines": machines, "embed_s": embed_s, "commit_s": commit_s})
        print(f"  {machines:2d} machine(s): embed {embed_s / 60:7.1f} min + commit {commit_s:5.1f} s", flush=True)
    figures.update(rows=rows, overhead=overhead, two_worker_speedup=speedup, projection=projection)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
