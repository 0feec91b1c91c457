"""The whole chain at the real widths, on CPU in bfloat16: RANDOM WEIGHTS AT REAL SIZES.

ViT-H/14, SDXL's CLIP-L and bigG, UNet and VAE are built once at SDXL's configurations with random
weights (benchmarks/fullsize_models.py; cached, about 16 GB) and named as a person names their own
files: `models.sdxl_model` is the single-file SGM checkpoint, `models.vision_model` the ComfyUI
clip_vision file. Then `luna build` runs on a sample library, and `luna refine` refines one
1024x1024 picture (chess grid 2, 1 step) with the SDXL-size UNet.

Printed per stage: throughput, peak resident memory, bytes on disk per image and per prompt chunk;
each projector architecture's checkpoint size (buffers included); and the embedding path's
efficiency against a bare forward pass of the same model on the same batches (goal >= 0.9).

.venv/bin/python benchmarks/bench_fullsize.py                      # 200 images + the refine
.venv/bin/python benchmarks/bench_fullsize.py --images 40 --skip-refine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from fullsize_models import ensure_fullsize_models

from luna_core.home.home import LunaHome
from luna_core.samples import make_sample_library

LUNA = [sys.executable, "-m", "luna_cli.main"]


class PeakMemory:
    """Resident memory of a child process, sampled every 0.2 s (a measurement, not a
    synchronisation): the peak within any time window afterwards."""

    def __init__(self, pid: int):
        self.pid, self.samples, self._done = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._done.wait(0.2):
            try:
                text = status.read_text()
            except OSError:
                return
            kb = next(
                (int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS")), 0
            )
            self.samples.append((time.time(), kb * 1024))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def run_luna(arguments: list[str], env: dict, must_pass: bool = True):
    """(seconds, memory, output, exit status) of one luna command."""
    started = time.perf_counter()
    process = subprocess.Popen(
        LUNA + arguments, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    memory = PeakMemory(process.pid)
    output = process.communicate()[0]
    memory.stop()
    if process.returncode and must_pass:
        sys.exit(f"luna {' '.join(arguments)} failed ({process.returncode}):\n{output[-3000:]}")
    return time.perf_counter() - started, memory, output, process.returncode


def stage_figures(home: LunaHome, memory: PeakMemory) -> list[dict]:
    """Per step of the last run: seconds, peak RSS, and the asset's own figures."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home.dagster_home)) as instance:
        run = instance.get_runs(limit=1)[0]
        events = [e for e in instance.all_logs(run.run_id) if e.dagster_event]
    starts, ends, metadata = {}, {}, {}
    for event in events:
        kind = event.dagster_event.event_type_value
        if kind == "STEP_START":
            starts[event.step_key] = event.timestamp
        elif kind == "STEP_SUCCESS":
            ends[event.step_key] = event.timestamp
        elif kind == "ASSET_MATERIALIZATION":
            data = event.dagster_event.step_materialization_data.materialization
            metadata[event.step_key] = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
    return [
        {
            "step": step,
            "seconds": round(ends[step] - start, 1),
            "peak_rss_gb": round(memory.peak(start, ends[step]) / 2**30, 2),
            "metadata": metadata.get(step, {}),
        }
        for step, start in sorted(starts.items(), key=lambda item: item[1])
        if step in ends
    ]


def bare_forward(files, batch: int, images: int, text_rows: int) -> dict:
    """The same models on the same batch sizes with nothing around them: the ceiling."""
    import numpy as np
    import torch

    from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder

    cpu = torch.device("cpu")
    vision = VisionEncoder(str(files.vision_file), None, cpu, torch.bfloat16)
    pixels = np.random.default_rng(0).normal(size=(batch, 3, 224, 224)).astype(np.float32)
    vision.embed_pixels(pixels[:1])  # warm-up
    started, done = time.perf_counter(), 0
    while done < images:
        vision.embed_pixels(pixels)
        done += batch
    vision_rate = done / (time.perf_counter() - started)
    del vision
    text = SDXLTextEncoder(str(files.sdxl_file), None, cpu, torch.bfloat16)
    ids = np.asarray(
        text.tokenizer(["a photo of a cat"] * 16, padding="max_length", max_length=77).input_ids
    )
    ids_2 = np.asarray(
        text.tokenizer_2(["a photo of a cat"] * 16, padding="max_length", max_length=77).input_ids
    )
    text.encode_ids(ids[:1], ids_2[:1])  # warm-up
    started, done = time.perf_counter(), 0
    while done < text_rows:
        text.encode_ids(ids, ids_2)
        done += len(ids)
    return {"vision_per_s": vision_rate, "text_rows_per_s": done / (time.perf_counter() - started)}


def projector_sizes() -> list[dict]:
    """Each architecture's checkpoint at SDXL widths: what the file holds, buffers included."""
    from luna_core.projector.models import (
        ARCHITECTURES,
        ProjectorConfig,
        build_projector,
        checkpoint_values,
        parameter_count,
    )

    rows = []
    for arch in ARCHITECTURES:
        model = build_projector(
            ProjectorConfig(arch=arch, in_dim=1024, width=2048, pooled_width=1280)
        )
        values = checkpoint_values(model)
        rows.append(
            {
                "arch": arch,
                "trained_parameters": parameter_count(model),
                "checkpoint_values": values,
                "checkpoint_mb_float32": round(values * 4 / 1e6, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512, help="sample picture side")
    parser.add_argument("--skip-refine", action="store_true")
    parser.add_argument("--cache", type=Path, help="where the random models are kept")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    files = ensure_fullsize_models(args.cache)
    work = Path(args.work or tempfile.mkdtemp(prefix="luna-fullsize-"))
    shutil.rmtree(work / "home", ignore_errors=True)
    started = time.perf_counter()
    make_sample_library(
        work / "library", args.images, seed=3, size=(args.size, args.size), broken=False
    )
    print(
        f"generated {args.images} pictures of {args.size}² in {time.perf_counter() - started:.0f}s"
    )
    home = LunaHome.resolve(work / "home").ensure()
    home.add_roots([work / "library"])
    home.set_model_profile("sdxl")
    home.set_setting("models", "sdxl_model", str(files.sdxl_file))
    home.set_setting("models", "vision_model", str(files.vision_file))
    home.set_setting("models", "dtype", "bfloat16")
    env = {**os.environ, "LUNA_HOME": str(home.root)}
    env.pop("LUNA_PROFILE", None)

    # a small library's projector is refused (too few pairs): the other stages still count
    build_seconds, memory, output, _ = run_luna(
        ["build", "--home", str(home.root)], env, must_pass=False
    )
    stages = stage_figures(home, memory)
    by_step = {stage["step"]: stage for stage in stages}
    vision = by_step["vision_embeddings"]["metadata"]
    text = by_step["text_conditionings"]["metadata"]
    figures = {
        "labels": "random weights at real sizes (ViT-H/14, CLIP-L + bigG, SDXL UNet and VAE)",
        "images": args.images,
        "build_seconds": round(build_seconds, 1),
        "build_peak_rss_gb": round(memory.peak() / 2**30, 2),
        "stages": stages,
        "failed": [line for line in output.splitlines() if line.startswith("FAILED in")],
        "vision_bytes_per_image": round(vision["MB on disk"] * 1e6 / max(1, vision["rows added"])),
        "text_bytes_per_chunk": round(text["MB on disk"] * 1e6 / max(1, text["rows added"])),
        "projectors": projector_sizes(),
        "model_files": files.sizes(),
    }
    # the assets' own batch sizes (LunaModelsResource: vision 32, text 16)
    bare = bare_forward(files, 32, 32, 32)
    vision_path = vision["rows added"] / (vision["duration (s)"] - vision["model load (s)"])
    text_path = text["rows added"] / (text["duration (s)"] - text["model load (s)"])
    figures["efficiency"] = {
        "vision_path_per_s": round(vision_path, 2),
        "vision_bare_per_s": round(bare["vision_per_s"], 2),
        "vision_efficiency": round(vision_path / bare["vision_per_s"], 3),
        "text_path_rows_per_s": round(text_path, 2),
        "text_bare_rows_per_s": round(bare["text_rows_per_s"], 2),
        "text_efficiency": round(text_path / bare["text_rows_per_s"], 3),
    }
    if not args.skip_refine:
        figures["refine"] = refine_once(work, home, env)
    figures["total_seconds"] = round(time.perf_counter() - started, 1)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1, default=str))


def refine_once(work: Path, home: LunaHome, env: dict) -> dict:
    picture = make_sample_library(work / "big", 1, seed=9, size=(1024, 1024), broken=False)
    source = next(path for path in sorted(Path(picture.root).rglob("*.png")))
    out = work / "refined.png"
    seconds, memory, output, _ = run_luna(
        [
            "refine",
            str(source),
            "--out",
            str(out),
            "--grid",
            "2",
            "--steps",
            "1",
            "--strength",
            "1.0",
            "--home",
            str(home.root),
        ],
        env,
    )
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gb": round(memory.peak() / 2**30, 2),
        "summary": [line for line in output.splitlines() if "pass" in line or "wrote" in line][-3:],
    }


def print_figures(figures: dict) -> None:
    print(f"\n{figures['labels']}; {figures['images']} sample pictures, CPU, bfloat16")
    print(f"luna build: {figures['build_seconds']}s, peak RSS {figures['build_peak_rss_gb']} GB")
    for line in figures["failed"]:
        print(f"  {line}")
    print(f"  {'stage':28} {'seconds':>8} {'peak RSS GB':>12}  throughput")
    for stage in figures["stages"]:
        rate = next((f"{v} {k}" for k, v in stage["metadata"].items() if k.endswith("/s")), "")
        print(f"  {stage['step']:28} {stage['seconds']:>8} {stage['peak_rss_gb']:>12}  {rate}")
    print(
        f"bytes on disk: {figures['vision_bytes_per_image']:,} per image (vision), "
        f"{figures['text_bytes_per_chunk']:,} per prompt chunk (text)"
    )
    e = figures["efficiency"]
    print(
        f"embedding path vs bare forward: vision {e['vision_path_per_s']} / "
        f"{e['vision_bare_per_s']} img/s = {e['vision_efficiency']} (goal >= 0.9); text "
        f"{e['text_path_rows_per_s']} / {e['text_bare_rows_per_s']} rows/s = {e['text_efficiency']}"
    )
    print("projector checkpoints at SDXL widths (parameters and buffers):")
    for row in figures["projectors"]:
        print(
            f"  {row['arch']:10} {row['checkpoint_values']:>12,} values "
            f"({row['trained_parameters']:,} trained), {row['checkpoint_mb_float32']} MB in float32"
        )
    sizes = figures["model_files"]
    print(
        f"single files: SDXL checkpoint {sizes['sdxl_file_bytes'] / 1e9:.2f} GB, "
        f"clip_vision {sizes['vision_file_bytes'] / 1e9:.2f} GB (bfloat16)"
    )
    print(f"whole benchmark: {figures['total_seconds']:.0f}s (the models' first build aside)")
    if "refine" in figures:
        r = figures["refine"]
        print(
            f"luna refine 1024², chess grid 2, 1 step: {r['seconds']}s, "
            f"peak RSS {r['peak_rss_gb']} GB"
        )
        for line in r["summary"]:
            print(f"  {line}")


if __name__ == "__main__":
    main()
