"""The report off the path of the data: the demo's build, the cheap report at two library sizes
beside the expensive benchmark, and how long a deleted file stays in `/search` under automation,
with and without a benchmark running, measured side by side in one run.

    .venv/bin/python benchmarks/bench_report.py                       # everything (about 15
    minutes) .venv/bin/python benchmarks/bench_report.py --skip-latency        # build and report
    times only .venv/bin/python benchmarks/bench_report.py --large 0             # no 5,000-image
    home

The latency runs `luna ui` (sensor, automation, daemon) and `luna serve` on the demo home, deletes a
file whose content no other file holds, and asks `/search` with that image every 2 s until no hit is
the deleted file. With a benchmark: the same after launching `run_refinement_benchmark` (default
settings: minutes) through the UI's GraphQL API, while that run is in progress.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.processes import Service, free_port  # noqa: E402

LUNA = str(Path(sys.executable).with_name("luna"))
LAUNCH = """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
STATUS = """query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""


def demo(home: str, images: int, size: int) -> float:
    """`luna demo` on a fresh home; the build time it prints."""
    done = subprocess.run(
        [LUNA, "demo", "--home", home, "--images", str(images), "--size", str(size)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"luna demo failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return float(re.search(r"Built in ([0-9.]+)s", done.stdout).group(1))


def report_seconds(home_path: str, repeat: int = 3) -> tuple[float, int]:
    """Median seconds of a forced cheap report (MLflow logging included) and the images it
    scored."""
    import numpy as np

    from luna_core.home.home import LunaHome
    from luna_core.reports.evaluate import EvalSettings
    from luna_core.reports.report import ReportSettings, build_report

    home = LunaHome.existing(home_path)
    profile = home.profile()
    times, scored = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        outcome = build_report(home, profile, ReportSettings(evaluation=EvalSettings(), force=True))
        times.append(time.perf_counter() - started)
        scored = outcome.report["test_set"]["scored"]
    return float(np.median(times)), scored


def _post(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _top_paths(search_url: str, body: bytes) -> list[str]:
    request = urllib.request.Request(search_url + "?k=5", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        return [hit["path"] for hit in json.loads(response.read())]


def deletion_latency(home, search_url: str, victim: Path, timeout: float = 900) -> float:
    """Seconds from deleting `victim` until no /search hit for its own picture is that file."""
    body = victim.read_bytes()
    assert str(victim) in _top_paths(search_url, body), (
        f"{victim} is not found by /search before its deletion"
    )
    started, pause = time.monotonic(), threading.Event()
    victim.unlink()
    while str(victim) in _top_paths(search_url, body):
        if time.monotonic() - started > timeout:
            raise SystemExit(f"{victim} was still found {timeout:.0f}s after its deletion")
        pause.wait(2.0)
    return time.monotonic() - started


def sole_copies(home) -> list[Path]:
    import duckdb

    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        rows = con.execute("""SELECT path FROM images WHERE status = 'ok' AND content_hash IN
                              (SELECT content_hash FROM images GROUP BY 1 HAVING count(*) = 1)
                              AND content_hash NOT IN (SELECT content_hash FROM near_duplicates
                                  UNION
                                                       SELECT twin_hash FROM near_duplicates)
                              ORDER BY path""").fetchall()
    return [Path(p) for (p,) in rows if not Path(p).is_symlink() and p.endswith(".png")]


def latency(home_path: str) -> dict:
    from luna_core.home.home import LunaHome

    home = LunaHome.existing(home_path)
    ui_port, serve_port = free_port(), free_port()
    ui = Service(
        "luna ui",
        [LUNA, "ui", "--home", home_path, "--port", str(ui_port)],
        ready="Serving dagster-webserver on",
    )
    serve = Service(
        "luna serve",
        [LUNA, "serve", "--home", home_path, "--port", str(serve_port)],
        ready="Uvicorn running on",
    )
    figures = {}
    try:
        ui.wait_ready(240)
        serve.wait_ready(240)
        serve.wait_listening(serve_port, 30)
        search = f"http://127.0.0.1:{serve_port}/search"
        victims = sole_copies(home)
        figures["idle_s"] = deletion_latency(home, search, victims[0])
        print(
            f"deleted file gone from /search, nothing else running: {figures['idle_s']:.0f} s",
            flush=True,
        )

        params = {
            "selector": {
                "repositoryLocationName": "luna",
                "repositoryName": "__repository__",
                "jobName": "run_refinement_benchmark",
            },
            "runConfigData": {},
        }
        answer = _post(f"http://127.0.0.1:{ui_port}/graphql", LAUNCH, {"params": params})["data"][
            "launchRun"
        ]
        run_id = answer["run"]["runId"]
        pause = threading.Event()

        def status() -> str:
            return _post(f"http://127.0.0.1:{ui_port}/graphql", STATUS, {"id": run_id})["data"][
                "runOrError"
            ]["status"]

        while status() in ("QUEUED", "STARTING", "NOT_STARTED"):
            pause.wait(1.0)
        figures["with_benchmark_s"] = deletion_latency(home, search, victims[1])
        figures["benchmark_status_after"] = status()
        print(
            "deleted file gone from /search, a benchmark running: "
            f"{figures['with_benchmark_s']:.0f} s "
            f"(the benchmark run was {figures['benchmark_status_after']} when the file was gone)",
            flush=True,
        )
    finally:
        serve.stop()
        ui.stop()
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=150, help="the demo's images (default 150)")
    parser.add_argument(
        "--large",
        type=int,
        default=5000,
        help="a second home's images for the report time (0: skip)",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    one, five, _ = os.getloadavg()
    figures: dict = {"load_before": [round(one, 2), round(five, 2)], "cores": os.cpu_count()}
    root = Path(tempfile.mkdtemp(prefix="luna-bench-report-"))
    demo_home = str(root / "demo")
    figures["demo_build_s"] = demo(demo_home, args.images, 256)
    print(
        f"demo build at {args.images} images: {figures['demo_build_s']:.1f} s (goal <= 60 s)",
        flush=True,
    )
    from luna_core.home.home import LunaHome
    from luna_core.reports.benchmark import latest_benchmark

    figures["demo_benchmark_s"] = latest_benchmark(LunaHome.existing(demo_home))[1]["seconds"]
    seconds, scored = report_seconds(demo_home)
    figures[f"report_{args.images}_s"] = seconds
    print(
        f"cheap report at {args.images} images ({scored} test images scored): {seconds:.2f} s; "
        "the demo's "
        f"benchmark (2 sample images, 1 batching repeat) took {figures['demo_benchmark_s']:.1f} s",
        flush=True,
    )
    if args.large:
        large_home = str(root / "large")
        figures["large_build_s"] = demo(large_home, args.large, 64)
        seconds, scored = report_seconds(large_home)
        figures[f"report_{args.large}_s"] = seconds
        print(
            f"cheap report at {args.large} images ({scored} test images scored): {seconds:.2f} s "
            f"(that home built in {figures['large_build_s']:.0f} s)",
            flush=True,
        )
    if not args.skip_latency:
        figures["deletion_latency"] = latency(demo_home)
    one, five, _ = os.getloadavg()
    figures["load_after"] = [round(one, 2), round(five, 2)]
    print(
        f"machine load (1 min, 5 min) before {figures['load_before']}, after "
        f"{figures['load_after']} on "
        f"{figures['cores']} cores"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
