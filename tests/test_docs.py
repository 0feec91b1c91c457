"""The README and docs/ stay true: every asset is in the README's table with a code path that
exists, every path named in the table exists, and every `luna` command shown parses with today's
CLI and runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _commands() -> list[tuple[str, str]]:
    """(page, command line) for each `.venv/bin/luna …` line of a code block (continuations
    joined)."""
    found = []
    for page in PAGES:
        in_code, pending = False, ""
        for line in page.read_text().splitlines():
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code:
                continue
            line = pending + line
            pending = ""
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1] + " "
                continue
            if line.lstrip().startswith(".venv/bin/luna "):
                found.append((page.name, line.strip()))
    return found


def test_the_readme_is_short_and_links_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / target).is_file(), target
    for page in PAGES[1:]:
        assert "[← README](../README.md)" in page.read_text(), page.name


def test_every_asset_is_in_the_readme_table_with_code_that_exists(tmp_path, monkeypatch):
    from luna_assets.definitions import build_definitions

    monkeypatch.setenv("LUNA_HOME", str(tmp_path / "home"))
    keys = {k.to_user_string() for k in build_definitions().resolve_all_asset_keys()}
    rows = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")
    ]
    in_table = {re.match(r"\| `([a-z_0-9]+)`", row).group(1): row for row in rows}
    assert keys <= set(in_table), keys - set(in_table)
    for key in keys:
        for path in re.findall(r"`((?:luna_assets|luna_core)/[^`]+)`", in_table[key]):
            assert (ROOT / path).exists(), f"{key}: {path}"


@pytest.mark.parametrize("page, command", _commands())
def test_every_command_shown_parses(page, command):
    from luna_cli.parser import build_parser, normalize_argv

    argv = shlex.split(command, comments=True)[1:]
    try:
        build_parser().parse_args(normalize_argv(argv))
    except SystemExit as exc:
        pytest.fail(f"{page}: `{command}` does not parse with today's CLI (exit {exc.code})")


# ---------------------------------------------------------------- every command, run

LUNA = str(Path(sys.executable).with_name("luna"))
SERVERS = {
    "serve": "Uvicorn running on",
    "ui": "Serving dagster-webserver on",
    "mlflow-server": "Application startup complete",
}


def _phase(argv: list[str]) -> int:
    """The order a person would run them in: catalog, build, ask, then the servers and what needs
    them."""
    command = argv[0]
    order = {"ingest": 0, "build": 1, "status": 2, "config": 2, "scale": 9}
    if command in SERVERS:
        return 8
    if "--server" in argv or any(a.startswith("http://mlflow") for a in argv):
        return 8  # run while the matching server is up
    return order.get(command, 3)


def _world(tmp_path: Path, sample_library, tiny_models) -> tuple[dict, dict]:
    """The files and folders the pages name, made real: two library folders, a 1024² render.png
    from the library, a boxes file; a home on the tiny profile."""
    import shutil

    from PIL import Image

    renders, old = tmp_path / "renders", tmp_path / "old_renders"
    shutil.copytree(sample_library.root, renders, symlinks=True)
    old.mkdir()
    first = sorted(renders.rglob("*_a1111_png.png"))[0]
    Image.open(first).convert("RGB").resize((1024, 1024)).save(tmp_path / "render.png")
    shutil.copy(first, old / "old.png")
    (tmp_path / "faces.json").write_text("[[410, 220, 180, 180]]")
    (tmp_path / "detections.json").write_text(
        json.dumps(
            {  # COCO, as a detector writes it
                "images": [{"id": 1, "file_name": "render.png", "width": 1024, "height": 1024}],
                "categories": [{"id": 1, "name": "hand"}],
                "annotations": [
                    {
                        "image_id": 1,
                        "category_id": 1,
                        "bbox": [300, 500, 200, 160],
                        "segmentation": [[300, 500, 500, 500, 400, 660]],
                        "prompt": "a hand",
                        "loras": ["film_grain_style:0.7"],
                    }
                ],
            }
        )
    )
    _sample_loras(tmp_path / "loras", tiny_models)
    from luna_core.models.sgm_layout import save_sdxl_single_file

    # the pages' own checkpoints: the tiny world as a single file of SDXL's layout
    checkpoint = save_sdxl_single_file(tiny_models / "sdxl", tmp_path / "checkpoint.safetensors")
    home = tmp_path / "home"
    env = {
        **os.environ,
        "LUNA_HOME": str(home),
        "LUNA_PROFILE": "tiny",
        "LUNA_LORA_DIRS": str(tmp_path / "loras"),
    }
    for name in ("LUNA_MLFLOW_URI", "LUNA_STORAGE_ROOT", "LUNA_VAULT_SHARDS", "LUNA_CELERY_BROKER"):
        env.pop(name, None)
    checkpoints = {
        f"~/ComfyUI/models/checkpoints/{name}.safetensors": str(checkpoint)
        for name in ("pony", "juggernautXL")
    }
    return {"/data/renders": str(renders), "/mnt/old_renders": str(old), **checkpoints}, env


def _sample_loras(folder: Path, tiny_models) -> None:
    """The LoRAs the pages name and the sample prompts' tags, for the tiny UNet (random weights)."""
    from diffusers import UNet2DConditionModel

    from luna_core.models.profiles import tiny_profile
    from luna_core.samples.loras import write_sample_lora
    from luna_core.samples.sample_library import LORA_NAMES

    unet = UNet2DConditionModel.from_pretrained(
        tiny_profile(tiny_models).sdxl_model, subfolder="unet"
    )
    for seed, name in enumerate(LORA_NAMES):
        write_sample_lora(folder / f"{name}.safetensors", unet, seed)


def test_every_command_shown_runs(tmp_path, sample_library, tiny_models):
    """Each `luna` command of the README and docs/ runs on a tiny home and exits 0. Only what a page
    cannot know is changed: its paths become real folders and files, servers listen on free ports
    (their URLs replaced in the commands that use them), and refining runs 2 sampler steps."""
    from devtools.processes import Service, free_port

    paths, env = _world(tmp_path, sample_library, tiny_models)
    seen, commands = set(), []
    for page, line in _commands():
        argv = [paths.get(a, a) for a in shlex.split(line, comments=True)[1:]]
        if tuple(argv) not in seen:
            seen.add(tuple(argv))
            commands.append((page, line, argv))
    commands.sort(key=lambda c: _phase(c[2]))
    failures, running, urls = [], [], {}

    def run(page, line, argv):
        argv = [urls.get(a, a) for a in argv]
        if argv[0] == "refine":
            argv += ["--steps", "2"]
        if argv[0] in SERVERS:
            port = free_port()
            service = Service(
                f"luna {argv[0]}",
                [LUNA, *argv, "--port", str(port)],
                SERVERS[argv[0]],
                env=env,
                cwd=str(tmp_path),
            )
            running.append(service)
            try:
                service.wait_ready(300)
                service.wait_listening(port, 60)
            except AssertionError as exc:
                failures.append(f"{page}: `{line}` did not start: {exc}")
            if argv[0] == "serve":
                urls["http://127.0.0.1:7861"] = f"http://127.0.0.1:{port}"
            if argv[0] == "mlflow-server":
                urls["http://mlflow:5000"] = f"http://127.0.0.1:{port}"
            return
        done = subprocess.run(
            [LUNA, *argv], cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900
        )
        if done.returncode != 0:
            failures.append(
                f"{page}: `{line}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-1500:]}"
            )

    try:
        servers = [c for c in commands if c[2][0] in SERVERS]
        dependents = [c for c in commands if _phase(c[2]) == 8 and c[2][0] not in SERVERS]
        for page, line, argv in [c for c in commands if _phase(c[2]) < 8]:
            run(page, line, argv)
        for (
            page,
            line,
            argv,
        ) in servers:  # one at a time: each started, its dependents run, then stopped
            run(page, line, argv)
            for dependent in [d for d in dependents if any(a in urls for a in d[2])]:
                run(*dependent)
                dependents.remove(dependent)
            for service in running:
                service.stop()
            running.clear()
        for page, line, argv in dependents + [c for c in commands if _phase(c[2]) == 9]:
            run(page, line, argv)
    finally:
        for service in running:
            service.stop()
    assert failures == [], "\n\n".join(failures)
