"""The `luna` command line: the demo end to end, ingest, status, and clear errors."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from luna_cli.main import main


@pytest.mark.slow  # the demo builds a home on the trained tiny world
def test_demo_builds_the_catalog_through_dagster(tmp_path: Path, capsys):
    home = tmp_path / "home"
    assert main(["demo", "--home", str(home), "--images", "60", "--size", "64"]) == 0
    out = capsys.readouterr().out
    assert (
        "Catalog:" in out
        and "luna ui --home" in out
        and "check ingested_images.every_image_has_content_hash: passed" in out
    )
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        generators = {
            g for (g,) in con.execute("SELECT DISTINCT generator FROM generations").fetchall()
        }
        quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert {
        "AUTOMATIC1111",
        "Forge",
        "ComfyUI",
        "InvokeAI",
        "NovelAI",
        "Fooocus",
        "SwarmUI",
        "Easy Diffusion",
        "Draw Things",
    } <= generators
    assert quarantined == 9
    assert "Vault (Zarr, float16):" in out and "prompts over one chunk of 77 tokens" in out
    assert "check vision_embeddings.counts_agree: passed" in out and "FAILED" not in out
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        images = con.execute(
            "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'"
        ).fetchone()[0]
        assert con.execute("SELECT count(*) FROM vision_rows").fetchone()[0] == images
    runs = list((home / "dagster_home").rglob("*.db"))
    assert runs, "the run is recorded in the home's Dagster instance, so the UI shows it"

    assert "Vault query: the centre crop" in out and (home / "demo_condition.safetensors").exists()
    assert (
        "Projector: luna-projector v1 is @champion" in out
        and (home / "demo_projector.safetensors").exists()
    )
    assert "Refined sample_library/comfyui/" in out and "13 even tiles in 1 call" in out
    assert len(list((home / "refined").glob("*.chess.png"))) == 1
    assert "Refinement report" in out and "sample generator" in out and "report.html" in out
    assert "Test set: series 1" in out and "benchmark (regeneration, costs): 20" in out
    assert len(list((home / "reports").glob("*/report.html"))) == 1

    # search and condition from the command line, on a crop of a sample image
    sample = next((home / "sample_library" / "a1111").glob("*.png"))
    assert main(["search", str(sample), "--home", str(home), "--k", "3", "--json"]) == 0
    found = __import__("json").loads(capsys.readouterr().out)
    assert len(found) == 3 and found[0]["path"] == str(sample)
    out_file = tmp_path / "c.safetensors"
    assert (
        main(
            [
                "condition",
                str(sample),
                "--box",
                "0,0,32,32",
                "--home",
                str(home),
                "--prompt",
                "a cat",
                "--mode",
                "concat",
                "--out",
                str(out_file),
            ]
        )
        == 0
    )
    from safetensors.numpy import load_file

    assert load_file(str(out_file))["prompt_embeds"].shape == (1, 154, 96)
    assert main(["search", str(sample), "--home", str(home), "--box", "0,0,9999,5"]) == 2
    assert "outside" in capsys.readouterr().err

    # A second demo reuses the library and re-reads nothing.
    assert main(["demo", "--home", str(home), "--images", "60", "--size", "64"]) == 0
    assert "reusing it" in capsys.readouterr().out


def test_ingest_and_status(tmp_path: Path, capsys, sample_library):
    home = tmp_path / "home"
    assert main(["ingest", str(sample_library.root), "--home", str(home), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert f"new {len(sample_library.images)}" in out
    assert str(sample_library.root) in (home / "luna.toml").read_text()
    assert main(["status", "--home", str(home)]) == 0
    assert "too_many_pixels" in capsys.readouterr().out


def test_ingest_of_a_missing_folder_is_a_clear_error(tmp_path: Path, capsys):
    assert main(["ingest", str(tmp_path / "nope"), "--home", str(tmp_path / "home")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_status_without_catalog(tmp_path: Path, capsys):
    (tmp_path / "home").mkdir()
    assert main(["status", "--home", str(tmp_path / "home")]) == 3
    assert "luna demo" in capsys.readouterr().err


def test_build_names_the_root_cause_and_fails_on_failed_checks(
    library_home, capsys, tmp_path, monkeypatch
):
    """What `luna build` prints for a run: a failed step by its root cause in one line, and a failed
    error-level check makes the build fail, by name."""
    import shutil

    import dagster as dg

    from luna_assets.defs.vault.assets import vision_embeddings
    from luna_assets.resources import LunaHomeResource, LunaModelsResource
    from luna_cli.build import report_run

    home, profile = library_home
    resources = {"luna": LunaHomeResource(home=str(home.root)), "models": LunaModelsResource()}
    with duckdb.connect(str(home.catalog_path)) as con:  # a row the Zarr store does not hold
        con.execute(
            "INSERT INTO vision_rows VALUES (?, 'not-an-image', 999999, now())",
            [profile.vision_key],
        )
    checked = dg.materialize(
        [vision_embeddings], resources=resources, instance=dg.DagsterInstance.ephemeral()
    )
    assert checked.success and report_run(checked) is False
    assert "FAILED checks: vision_embeddings.counts_agree" in capsys.readouterr().err, (
        "and nothing crashed reading it"
    )

    with duckdb.connect(str(home.catalog_path)) as con:
        # everything to embed again, with the model folder gone
        con.execute("DELETE FROM vision_rows")
    cache = tmp_path / "tiny-cache"  # a copy of the machine's tiny world, to break without harm
    shutil.copytree(
        Path(profile.vision_model).parent, cache / Path(profile.vision_model).parent.name
    )
    monkeypatch.setenv("LUNA_TINY_CACHE", str(cache))
    shutil.rmtree(cache / Path(profile.vision_model).parent.name / "vision")
    failed = dg.materialize(
        [vision_embeddings],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert report_run(failed) is False
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("FAILED")]
    assert (
        len(err) == 1
        and err[0].startswith("FAILED in vision_embeddings:")
        and "vision model" in err[0]
    ), err
    assert "DagsterExecutionStepExecutionError" not in err[0]


def test_luna_ui_stops_with_its_processes_on_sigterm(tiny_home):
    """A SIGTERM to `luna ui` alone (what a service manager sends) ends it and every process it
    started (webserver, daemon, code servers) within seconds; `dagster dev` by itself took
    minutes."""
    import os
    import signal
    import subprocess
    import sys

    from tests.services import Service, free_port

    port = free_port()
    luna = str(Path(sys.executable).with_name("luna"))
    ui = Service(
        "luna ui",
        [luna, "ui", "--home", str(tiny_home.root), "--port", str(port)],
        ready="Serving dagster-webserver",
    )
    try:
        ui.wait_ready(180)
        children = subprocess.run(
            ["pgrep", "-P", str(ui.process.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 1, "luna ui runs dagster dev as one child"
        group = os.getpgid(int(children[0]))
        assert group != os.getpgid(ui.process.pid), "in a process group of its own"
        os.kill(ui.process.pid, signal.SIGTERM)
        code = ui.process.wait(30)  # a bound for a hang: the grace period is 5 s
        assert code == 130 and any("Stopping the Dagster UI" in line for line in ui.lines)
        assert _running_in_group(group) == [], (
            f"processes of dagster dev's group {group} outlived luna ui"
        )
    finally:
        ui.stop()


def _running_in_group(group: int) -> list[str]:
    """Processes of a process group that still run (killed ones not yet reaped by init are
    zombies: done)."""
    import os

    running = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == group and fields[0] != "Z":
            running.append(f"{entry} {stat[:80]}")
    return running


def test_luna_build_leaves_the_benchmark_to_its_schedule(tiny_home, capsys):
    """`luna build` materializes the chain and the cheap report; the benchmark (minutes) is not
    in the path."""
    import dagster as dg

    assert main(["build", "--home", str(tiny_home.root)]) == 0
    instance = dg.DagsterInstance.from_config(str(tiny_home.dagster_home))
    materialized = {
        key.to_user_string()
        for key in instance.get_asset_keys()
        if instance.get_latest_materialization_event(key) is not None
    }
    assert {"faiss_index", "luna_catalog", "refinement_report"} <= materialized
    assert "refinement_benchmark" not in materialized


def test_the_cli_restates_no_default():
    """Every option default comes from the core (settings dataclasses, named constants): a literal
    number or word in `default=` would drift from the code that uses it."""
    import ast

    root = Path(__file__).resolve().parents[1]
    literals = []
    for path in (root / "luna_cli").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                for keyword in node.keywords:
                    if (
                        keyword.arg == "default"
                        and isinstance(keyword.value, ast.Constant)
                        and keyword.value.value not in (None, True, False)
                    ):
                        literals.append(
                            f"{path.name}:{node.lineno} "
                            f"{ast.unparse(node.args[0])}={keyword.value.value!r}"
                        )
    assert literals == []
    from luna_cli.parser import build_parser
    from luna_core.refine.options import SamplerSettings

    refine = build_parser().parse_args(["refine", "x.png", "--out", "y.png"])
    assert (refine.steps, refine.strength, refine.batch_size) == (
        SamplerSettings.steps,
        SamplerSettings.strength,
        SamplerSettings.batch_size,
    )
