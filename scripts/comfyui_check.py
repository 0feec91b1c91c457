"""Luna's graph refiners against a real ComfyUI (scripts/comfyui-check runs this).

Part 1, in this process on ComfyUI's own modules and loader: the per-row size conditioning equals
ComfyUI's `encode_adm` bit for bit, and an item refined in a batch of 4 equals it refined alone.
Part 2, through ComfyUI's server: the pack linked into custom_nodes, one graph per node sent to
`POST /prompt`, the outcome read from `GET /history/{id}`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT_NAME = "luna-check.safetensors"


def _comfy_in_process(comfyui: Path):
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI's modules read their flags from the command line
    sys.path[:0] = [str(comfyui), str(ROOT)]
    # ComfyUI's own modules: importable once its folder is on the path
    import comfy.options

    comfy.options.enable_args_parsing()


def part_one(checkpoint: Path, home: str, size: int) -> list[str]:
    # ComfyUI's loader and Luna's graph sampling, inside this process (see _comfy_in_process)
    import comfy.sd
    import torch

    from comfyui_luna.graph_answers import Answers
    from comfyui_luna.graph_conditioning import batch_conditioning
    from comfyui_luna.graph_sampling import PassSettings, refine_pass, size_vector
    from luna_core.refine.options import SourceSettings

    started = time.perf_counter()
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(str(checkpoint))
    lines = [
        f"loaded {checkpoint.name} with ComfyUI's loader in {time.perf_counter() - started:.0f} s"
    ]
    sizes = [(1024, 1024, 0, 0, 1024, 1024), (2048, 1536, 512, 256, size, size)]
    for s in sizes:
        h, w, top, left, th, tw = s
        ours = size_vector(model, s)
        theirs = model.model.encode_adm(
            pooled_output=torch.zeros(1, 1280),
            width=w,
            height=h,
            crop_w=left,
            crop_h=top,
            target_width=tw,
            target_height=th,
        )[0, 1280:]
        if not torch.equal(ours, theirs):
            raise SystemExit(f"FAIL: the size vector for {s} differs from encode_adm's")
    lines.append("size conditioning per row: equal to ComfyUI's encode_adm, bit for bit")
    pixels = torch.rand(4, size, size, 3, generator=torch.Generator().manual_seed(0))
    answers = Answers(clip, SourceSettings(k=3), home, "")
    items = answers.items(pixels, None, None)
    # item 1 gets a prompt of two chunks: rows of 1 and 2 chunks meet at 2 by repetition
    long, pooled = answers.cache.encode(clip, (", ".join(["a red fox in the snow"] * 20),))
    items[1] = dataclasses.replace(items[1], tokens=long, pooled=pooled)
    sizes = [(size * 2, size * 2, 0, i * 8, size, size) for i in range(4)]
    settings = PassSettings(3, 5.0, "euler", "normal", 0.5, 0)

    def run(picked: list[int]):
        pos = batch_conditioning(
            [items[i].tokens for i in picked], [items[i].pooled for i in picked]
        )
        neg = batch_conditioning(
            [items[i].negative for i in picked], [items[i].negative_pooled for i in picked]
        )
        return refine_pass(
            model,
            vae,
            pixels[picked],
            pos,
            neg,
            [sizes[i] for i in picked],
            [7 + i for i in picked],
            settings,
        )

    torch.set_grad_enabled(False)  # as ComfyUI runs its nodes
    started = time.perf_counter()
    batched = run([0, 1, 2, 3])
    batch_seconds = time.perf_counter() - started
    started = time.perf_counter()
    alone = torch.cat([run([i]) for i in range(4)])
    alone_seconds = time.perf_counter() - started
    worst = float((batched - alone).abs().max())
    chunks = [int(i.tokens.shape[0]) // 77 for i in items]
    lines.append(
        f"batch of 4 vs each alone ({size}x{size}, chunk counts {chunks}, euler, float32): "
        f"max |diff| {worst:.2e} ({'bit for bit' if worst == 0 else 'within 1e-5'}); "
        f"one call {batch_seconds:.1f} s, four calls {alone_seconds:.1f} s"
    )
    if worst > 1e-5:
        raise SystemExit("FAIL: " + lines[-1])
    return lines


def _request(port: int, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
    return json.loads(text) if text.strip() else {}


def _graphs(image_name: str, home: str) -> dict[str, dict]:
    loader = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}}
    load = {"class_type": "LoadImage", "inputs": {"image": image_name}}
    common = {
        "image": ["2", 0],
        "model": ["1", 0],
        "clip": ["1", 1],
        "vae": ["1", 2],
        "source": "blend",
        "alpha": 0.5,
        "k": 3,
        "temperature": 0.05,
        "projector": "models:/luna-projector@champion",
        "strength": 0.4,
        "steps": 2,
        "guidance": 5.0,
        "seed": 3,
        "batch_size": 0,
        "sampler_name": "euler",
        "scheduler": "normal",
        "home": home,
        "positive": ["5", 0],
        "negative": ["6", 0],
    }
    typed = {
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["1", 1]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
    }

    def graph(node: str, extra: dict) -> dict:
        return {
            "1": loader,
            "2": load,
            **typed,
            "3": {"class_type": node, "inputs": {**common, **extra}},
            "4": {
                "class_type": "SaveImage",
                "inputs": {"images": ["3", 0], "filename_prefix": node},
            },
            "7": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
        }

    return {
        "LunaChessRefiner": graph("LunaChessRefiner", {"grid": 2}),
        "LunaSemanticDetailer": graph(
            "LunaSemanticDetailer", {"piece_mode": "concat", "crop_size": 128, "masks": ["2", 1]}
        ),
    }


@contextlib.contextmanager
def prepared(comfyui: Path, checkpoint: Path, port: int, python: str):
    """ComfyUI's server running with the pack linked into custom_nodes, the checkpoint in
    models/checkpoints and a test picture in input/ (its alpha hole: LoadImage's MASK); yields
    (server process, /object_info, seconds to start); the link made here is removed after."""
    # numpy and PIL: the test picture
    import numpy as np
    from PIL import Image

    link = comfyui / "custom_nodes" / "comfyui_luna"
    made_link = not link.exists()
    if made_link:
        link.symlink_to(ROOT / "comfyui_luna")
    model_link = comfyui / "models" / "checkpoints" / CHECKPOINT_NAME
    if not model_link.exists():
        model_link.symlink_to(checkpoint)
    rgba = np.random.default_rng(0).integers(0, 256, (192, 192, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[40:100, 60:130, 3] = 0  # LoadImage's MASK is 1 - alpha: this box
    (comfyui / "input").mkdir(exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(comfyui / "input" / "luna-check.png")
    log = open(comfyui / "luna-check-server.log", "w")
    server = subprocess.Popen(
        [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)],
        cwd=comfyui,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        started = time.perf_counter()
        while True:  # a server's start is awaited by asking it, never by sleeping and hoping
            if server.poll() is not None:
                raise SystemExit(f"FAIL: ComfyUI exited; see {log.name}")
            try:
                info = _request(port, "/object_info")
                break
            except OSError:
                time.sleep(0.5)
        yield server, info, time.perf_counter() - started
    finally:
        server.terminate()
        server.wait()
        log.close()
        if made_link:
            link.unlink()


def part_two(comfyui: Path, checkpoint: Path, home: str, port: int, python: str) -> list[str]:
    with prepared(comfyui, checkpoint, port, python) as (server, info, seconds):
        lines = [
            f"server up in {seconds:.0f} s; nodes listed: "
            f"{', '.join(sorted(n for n in info if n.startswith('Luna')))}"
        ]
        for name, graph in _graphs("luna-check.png", home).items():
            started = time.perf_counter()
            prompt_id = _request(port, "/prompt", {"prompt": graph})["prompt_id"]
            while True:
                history = _request(port, f"/history/{prompt_id}").get(prompt_id)
                if history and history.get("status", {}).get("completed") is not None:
                    break
                if server.poll() is not None:
                    raise SystemExit(f"FAIL: ComfyUI exited during {name}")
                time.sleep(0.5)
            status = history["status"]
            if status.get("status_str") != "success":
                errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                raise SystemExit(f"FAIL: {name}: {json.dumps(errors)[:2000]}")
            saved = history["outputs"]["4"]["images"][0]["filename"]
            report = history["outputs"]["7"]["text"][0]
            lines.append(
                f"{name} via /prompt: success in {time.perf_counter() - started:.0f} s, "
                f"saved output/{saved}; report:\n    " + report.replace("\n", "\n    ")
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comfyui", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--size", type=int, default=64, help="part 1's tile side (pixels)")
    # two processes, one model each: a full-size SDXL twice would not fit beside the other
    parser.add_argument("--part", type=int, choices=(1, 2), required=True)
    args = parser.parse_args()
    comfyui = args.comfyui.resolve()
    if args.part == 1:
        _comfy_in_process(comfyui)
        print(f"ComfyUI at {comfyui} (core {_core_version(comfyui)}), Luna at {ROOT}")
        lines = part_one(args.checkpoint.resolve(), args.home, args.size)
    else:
        lines = part_two(comfyui, args.checkpoint.resolve(), args.home, args.port, sys.executable)
    print("\n".join(lines), flush=True)


def _core_version(comfyui: Path) -> str:
    text = (comfyui / "comfyui_version.py").read_text()
    return text.split('"')[1] if '"' in text else "unknown"


if __name__ == "__main__":
    main()
