"""The GPU suite runs where no GPU is: its dry run goes through every measurement on the CPU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the tiny world's models, a sampler and three LoRAs: about 30 s
def test_the_gpu_suite_dry_run_writes_every_figure(tmp_path, tiny_models):
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-suite"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads((tmp_path / "gpu-suite.json").read_text())
    assert "dry run" in figures["label"]
    assert figures["embedding"]["images"] >= 8 and figures["embedding"]["efficiency"] > 0
    assert figures["text"]["chunks_per_s"] > 0
    batching = figures["refine"]["batching"]
    assert {"speedup"} <= set(batching["detailer, 9 crops"]) and any(
        name.startswith("chess") for name in batching
    )
    assert figures["refine"]["lora"]["per_row_overhead"] is not None
    memory = figures["refine"]["memory"]
    assert len(memory) == 2 and all(row["peak_mb"] > 0 for row in memory)
    table = (tmp_path / "gpu-suite.md").read_text()
    for words in ("P1 efficiency", "text encoders", "batched vs one call", "LoRA", "budget"):
        assert words in table


def test_the_gpu_suite_refuses_to_measure_a_gpu_it_does_not_have(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu-suite"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no CUDA device" in done.stderr
