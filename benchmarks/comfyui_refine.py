"""`bench_refine.py --comfyui DIR`: Luna's graph refiners in a real ComfyUI, batched against one
sampler call per item, both nodes, in one run; and what the per-item conditioning costs beside
the sampler.

The model is loaded by ComfyUI's own loader (CheckpointLoaderSimple's code): by default the
full-size random-weight SDXL that benchmarks/fullsize_models.py builds. The tiny world has no form
in ComfyUI's classes (ComfyUI's SDXL text encoders and size embedder are fixed to SDXL's widths),
so the CPU figure is the full-size architecture on small tiles, where a UNet call costs its
weights' reading more than its arithmetic. Run it with the Python ComfyUI runs in.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path


def _load(comfyui: Path, checkpoint: Path):
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI's modules read their flags from the command line
    sys.path.insert(0, str(comfyui))
    # ComfyUI's own modules: importable once its folder is on the path
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sd

    return comfy.sd.load_checkpoint_guess_config(str(checkpoint))[:3]


def _seconds(report: str) -> tuple[float, float]:
    """(sampling, conditioning) seconds from a node's report."""
    line = next(x for x in report.splitlines() if x.startswith("sampler calls"))
    sampling = float(line.split("(")[1].split(" s")[0])
    conditioning = float(line.split("conditioning ")[1].split(" s")[0])
    return sampling, conditioning


def run(comfyui: Path, checkpoint: Path, home: str, repeat: int, steps: int) -> dict:
    # torch: the benchmark runs the models
    import torch

    from comfyui_luna.graph_nodes import LunaChessRefiner, LunaSemanticDetailer
    from comfyui_luna.inputs import widget_defaults

    started = time.perf_counter()
    model, clip, vae = _load(comfyui, checkpoint)
    print(f"{checkpoint.name} loaded by ComfyUI's loader in {time.perf_counter() - started:.0f} s")
    torch.set_grad_enabled(False)  # as ComfyUI runs its nodes
    image = torch.rand(1, 192, 192, 3, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(6, 192, 192)
    for i in range(6):
        y, x = 20 + 70 * (i // 3), 10 + 60 * (i % 3)
        masks[i, y : y + 40, x : x + 40] = 1
    figures = {}
    for name, node, extra in (
        ("chess 3x3 of 192² (9 tiles, 2 passes)", LunaChessRefiner(), {"grid": 3}),
        ("detailer, 6 crops at 64²", LunaSemanticDetailer(), {"crop_size": 64, "masks": masks}),
    ):
        values = {**widget_defaults(type(node)), **extra, "home": home, "k": 3}
        values.update(steps=steps, strength=0.5, sampler_name="euler")
        for key in ("image", "model", "vae", "clip"):
            values.pop(key, None)
        call = getattr(node, type(node).FUNCTION)
        _, cold = call(image, model, vae, clip, **values)  # the vault opens, prompts encoded
        timed = {}
        for label, cap in (("batched", 0), ("one call per item", 1)):
            runs = []
            for _ in range(repeat):
                t = time.perf_counter()
                out, report = call(image, model, vae, clip, **{**values, "batch_size": cap})
                runs.append((time.perf_counter() - t, out, report))
            seconds = statistics.median(r[0] for r in runs)
            timed[label] = (seconds, runs[-1][1], _seconds(runs[-1][2]))
        (b, b_out, (b_sample, b_cond)), (s, s_out, _) = timed["batched"], timed["one call per item"]
        diff = float((b_out - s_out).abs().max())
        figures[name] = {
            "batched_s": b,
            "one_call_per_item_s": s,
            "speedup": s / b,
            "max_pixel_diff": diff,
            "conditioning_s": b_cond,
            "first_conditioning_s": _seconds(cold)[1],
            "sampling_s": b_sample,
        }
        print(
            f"{name:40s} batched {b:6.1f}s   one call per item {s:6.1f}s   speedup {s / b:4.2f}x"
            f"   max pixel difference {diff:.1e}\n{'':40s} batched: sampling {b_sample:.1f}s, "
            f"conditioning {b_cond:.2f}s (first run, vault opened and prompts encoded: "
            f"{_seconds(cold)[1]:.1f}s)"
        )
    return figures
