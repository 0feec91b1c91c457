"""`luna serve` against the core call it wraps and the CLI's whole process, side by side in one run.

    .venv/bin/python benchmarks/bench_serve.py --home luna_home        # a built home (e.g. `luna
    demo`) .venv/bin/python benchmarks/bench_serve.py                         # builds a small
    demo home first

Prints p50/p99 of POST /condition for one crop and for a batch of 9 crops, the in-process
`VaultQuery.condition_crops` for the same crops, the service's overhead (p50 difference), and the
time of one `luna condition` process (start-up, model load, index open, answer).

Then a load test on loopback, bounded in count: `--searches` POST /search from one client, then
the same number from `--clients` clients at once with `--malformed` bad requests among them,
while a prober asks /health over and over: p50/p99 of /search for one client and for many,
/health's p50/p99 under that load, and every status that was not the expected one (200 for
searches, 4xx for the malformed).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.processes import Service, free_port  # noqa: E402

LUNA = str(Path(sys.executable).with_name("luna"))


def _percentiles(times: list[float]) -> tuple[float, float]:
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _timed_request(url: str, data: bytes | None = None) -> tuple[int, float]:
    started = time.perf_counter()
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        status = exc.code
    return status, (time.perf_counter() - started) * 1000


MALFORMED = [
    ("/search?k=0", True),
    ("/search?box=1,2,3", True),
    ("/search", False),
    ("/search?k=lots", True),
    ("/search?path=/etc/passwd", False),
    ("/search?after=someday", True),
]


def load_test(server: str, body: bytes, searches: int, clients: int, malformed: int) -> dict:
    """One client, then `clients` at once (with malformed requests among them), /health probed
    throughout."""
    url = f"{server}/search?k=5&box=0,0,64,64"
    single = [_timed_request(url, body) for _ in range(searches)]
    jobs = [(url, body, 200)] * searches + [
        (f"{server}{path}", body if with_body else b"not an image", 400)
        for path, with_body in (MALFORMED * malformed)[:malformed]
    ]
    jobs = jobs[::2] + jobs[1::2]  # the malformed ones spread among the searches
    results, health, lock, done = [], [], threading.Lock(), threading.Event()

    def client(share):
        for job_url, data, expected in share:
            status, ms = _timed_request(job_url, data)
            with lock:
                results.append((expected, status, ms))

    def prober():
        while not done.is_set():
            health.append(_timed_request(f"{server}/health"))

    probe = threading.Thread(target=prober)
    probe.start()
    threads = [threading.Thread(target=client, args=(jobs[i::clients],)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done.set()
    probe.join()
    many = [ms for expected, status, ms in results if expected == 200 and status == 200]
    unexpected = [
        (expected, status)
        for expected, status, _ in results
        if (expected == 200) != (status == 200) or (expected != 200 and not 400 <= status < 500)
    ]
    one50, one99 = _percentiles([ms for _, ms in single])
    many50, many99 = _percentiles(many)
    health50, health99 = _percentiles([ms for _, ms in health])
    figures = {
        "searches": searches,
        "clients": clients,
        "malformed": malformed,
        "one_client_p50_ms": one50,
        "one_client_p99_ms": one99,
        "many_clients_p50_ms": many50,
        "many_clients_p99_ms": many99,
        "many_clients_searches_per_s": len(many) / elapsed,
        "one_client_searches_per_s": len(single) / (sum(ms for _, ms in single) / 1000),
        "health_p50_ms": health50,
        "health_p99_ms": health99,
        "health_probes": len(health),
        "unexpected_statuses": unexpected,
        "single_client_errors": sum(s != 200 for s, _ in single),
    }
    print(
        f"/search, 1 client:  p50 {one50:7.1f} ms  p99 {one99:7.1f} ms  "
        f"({figures['one_client_searches_per_s']:.1f}/s)"
    )
    print(
        f"/search, {clients} clients: p50 {many50:7.1f} ms  p99 {many99:7.1f} ms  "
        f"({figures['many_clients_searches_per_s']:.1f}/s, {malformed} malformed among them)"
    )
    print(
        f"/health under that load: p50 {health50:.1f} ms  p99 {health99:.1f} ms over "
        f"{len(health)} probes"
    )
    print(
        f"unexpected statuses: {unexpected or 'none'}; single-client errors: "
        f"{figures['single_client_errors']}",
        flush=True,
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", help="a built Luna home (default: a fresh 120-image demo home)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--searches", type=int, default=500, help="searches in each load phase")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--malformed", type=int, default=50, help="bad requests sent among the searches"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from luna_core.ask.answers import crop
    from luna_core.ask.boxes import Box
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.home.home import LunaHome

    if args.home is None:
        args.home = tempfile.mkdtemp(prefix="luna-bench-serve-")
        subprocess.run(
            [LUNA, "demo", "--home", args.home, "--images", "120"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    home = LunaHome.existing(args.home)
    profile = home.profile()
    vault = VaultQuery(home, profile)
    picture_path = Path(vault.index.lookup.column("path")[0].as_py())
    body = picture_path.read_bytes()
    from PIL import Image

    picture = Image.open(io.BytesIO(body)).convert("RGB")
    side = min(picture.width, picture.height) // 3
    boxes = [f"{x * side},{y * side},{side},{side}" for x in range(3) for y in range(3)]

    def core(box_list: list[str]) -> float:
        started = time.perf_counter()
        decoded = Image.open(io.BytesIO(body)).convert("RGB")  # the service decodes the upload too
        vault.condition_crops([crop(decoded, Box.parse(b), "bench") for b in box_list]).to_bytes()
        return (time.perf_counter() - started) * 1000

    port = free_port()
    server = Service(
        "luna serve",
        [LUNA, "serve", "--home", str(home.root), "--port", str(port)],
        ready="Uvicorn running on",
    )
    figures = {
        "home": str(home.root),
        "profile": profile.name,
        "picture": str(picture_path),
        "repeats": args.repeats,
    }
    try:
        server.wait_ready(180)
        server.wait_listening(port, 30)
        url = f"http://127.0.0.1:{port}/condition"

        def served(box_list: list[str]) -> float:
            query = urllib.parse.urlencode([("box", b) for b in box_list])
            started = time.perf_counter()
            with urllib.request.urlopen(
                urllib.request.Request(f"{url}?{query}", data=body, method="POST")
            ) as r:
                r.read()
            return (time.perf_counter() - started) * 1000

        figures["load"] = load_test(
            f"http://127.0.0.1:{port}", body, args.searches, args.clients, args.malformed
        )
        for name, box_list in (("one crop", boxes[:1]), ("batch of 9 crops", boxes)):
            for fn in (core, served):
                fn(box_list)  # warm
            core_times = [core(box_list) for _ in range(args.repeats)]
            served_times = [served(box_list) for _ in range(args.repeats)]
            (c50, c99), (s50, s99) = _percentiles(core_times), _percentiles(served_times)
            figures[name] = {
                "core_p50_ms": c50,
                "core_p99_ms": c99,
                "service_p50_ms": s50,
                "service_p99_ms": s99,
                "overhead_p50_ms": s50 - c50,
            }
            print(
                f"{name:18s} core p50 {c50:7.2f} ms p99 {c99:7.2f} ms | /condition p50 "
                f"{s50:7.2f} ms "
                f"p99 {s99:7.2f} ms | service overhead at p50 {s50 - c50:+6.2f} ms",
                flush=True,
            )
    finally:
        server.stop()

    out = Path(tempfile.mkdtemp()) / "c.safetensors"
    started = time.perf_counter()
    subprocess.run(
        [
            LUNA,
            "condition",
            str(picture_path),
            "--home",
            str(home.root),
            "--box",
            boxes[0],
            "--out",
            str(out),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    figures["cli_process_s"] = time.perf_counter() - started
    print(
        "one `luna condition` process (start-up, models, index, answer): "
        f"{figures['cli_process_s']:.2f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
