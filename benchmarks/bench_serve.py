"""`luna serve` against the core call it wraps and the CLI's whole process, side by side in one run.

    .venv/bin/python benchmarks/bench_serve.py --home luna_home        # a built home (e.g. `luna demo`)
    .venv/bin/python benchmarks/bench_serve.py                         # builds a small demo home first

Prints p50/p99 of POST /condition for one crop and for a batch of 9 crops, the in-process
`Vault.condition_crops` for the same crops, the service's overhead (p50 difference), and the time of
one `luna condition` process (start-up, model load, index open, answer).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", help="a built Luna home (default: a fresh 120-image demo home)")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from luna_core.boxes import Box
    from luna_core.models.profiles import resolve_profile
    from luna_core.query import Vault, crop
    from luna_core.settings import LunaHome

    if args.home is None:
        args.home = tempfile.mkdtemp(prefix="luna-bench-serve-")
        subprocess.run([LUNA, "demo", "--home", args.home, "--images", "120"], check=True, stdout=subprocess.DEVNULL)
    home = LunaHome.existing(args.home)
    profile = resolve_profile(home.model_profile(), home.models_dir)
    vault = Vault(home, profile)
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
    server = Service("luna serve", [LUNA, "serve", "--home", str(home.root), "--port", str(port)],
                     ready="Uvicorn running on")
    figures = {"home": str(home.root), "profile": profile.name, "picture": str(picture_path), "repeats": args.repeats}
    try:
        server.wait_ready(180)
        server.wait_listening(port, 30)
        url = f"http://127.0.0.1:{port}/condition"

        def served(box_list: list[str]) -> float:
            query = urllib.parse.urlencode([("box", b) for b in box_list])
            started = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(f"{url}?{query}", data=body, method="POST")) as r:
                r.read()
            return (time.perf_counter() - started) * 1000

        for name, box_list in (("one crop", boxes[:1]), ("batch of 9 crops", boxes)):
            for fn in (core, served):
                fn(box_list)  # warm
            core_times = [core(box_list) for _ in range(args.repeats)]
            served_times = [served(box_list) for _ in range(args.repeats)]
            (c50, c99), (s50, s99) = _percentiles(core_times), _percentiles(served_times)
            figures[name] = {"core_p50_ms": c50, "core_p99_ms": c99, "service_p50_ms": s50, "service_p99_ms": s99,
                             "overhead_p50_ms": s50 - c50}
            print(f"{name:18s} core p50 {c50:7.2f} ms p99 {c99:7.2f} ms | /condition p50 {s50:7.2f} ms "
                  f"p99 {s99:7.2f} ms | service overhead at p50 {s50 - c50:+6.2f} ms", flush=True)
    finally:
        server.stop()

    out = Path(tempfile.mkdtemp()) / "c.safetensors"
    started = time.perf_counter()
    subprocess.run([LUNA, "condition", str(picture_path), "--home", str(home.root), "--box", boxes[0],
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    figures["cli_process_s"] = time.perf_counter() - started
    print(f"one `luna condition` process (start-up, models, index, answer): {figures['cli_process_s']:.2f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
