"""Projectors in MLflow: register, promote only a better one, load by alias, refuse what does not fit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from luna_core.errors import LunaConfigError
from luna_core.projector.models import ProjectorConfig
from luna_core.projector.registry import list_versions, load_version, register, tracking_uri
from luna_core.projector.train import TrainSettings, train_projector, validation_scorer

SMALL = TrainSettings(epochs=3, min_train_pairs=8, min_val_pairs=2, batch_size=8)


@pytest.fixture
def trained(library_home):
    home, profile = library_home
    good = train_projector(home.root, home.catalog_path, profile, ProjectorConfig(arch="linear", rank=8), SMALL)
    score = validation_scorer(home.root, home.catalog_path, profile)
    return home, profile, good, score


def test_only_a_better_candidate_becomes_champion(trained):
    home, profile, good, score = trained
    first = register(good, home.root, profile, score, tags={"code_version": "t"})
    assert (first.version, first.promoted) == (1, True)
    worse = replace(good, model=type(good.model)(good.config))  # an unfitted model: all-zero answers
    second = register(worse, home.root, profile, score, tags={"code_version": "t"})
    assert (second.version, second.promoted) == (2, False) and second.candidate_score > second.champion_score
    better_margin = register(good, home.root, profile, score, margin=10.0)
    assert better_margin.promoted is False, "a candidate must beat the champion by the margin"
    versions = {v["version"]: v for v in list_versions(home.root)}
    assert versions[1]["aliases"] == "champion" and versions[2]["promoted"] == "False"
    assert all(v["fingerprint"] == good.data_fingerprint for v in versions.values())
    model, config = load_version(home.root, "luna-projector", "champion")
    x = torch.randn(3, config.in_dim)
    with torch.no_grad():
        np.testing.assert_allclose(model(x)[0].numpy(), good.model(x)[0].numpy(), atol=1e-5)


def test_pyfunc_model_maps_embeddings_to_flat_conditionings(trained):
    import mlflow

    home, profile, good, score = trained
    register(good, home.root, profile, score)
    mlflow.set_tracking_uri(tracking_uri(home.root))
    model = mlflow.pyfunc.load_model("models:/luna-projector@champion")
    out = model.predict(np.zeros((2, 32), np.float32))
    assert out.shape == (2, 77 * 96 + 48)
    inputs = model.metadata.get_input_schema().inputs[0]
    assert inputs.shape == (-1, 32)


def test_widths_that_do_not_fit_and_missing_versions_are_clear_errors(trained):
    home, profile, good, score = trained
    register(good, home.root, profile, score)
    with pytest.raises(LunaConfigError, match="trained for other encoders"):
        load_version(home.root, "luna-projector", 1, expect={"width": 2048})
    with pytest.raises(LunaConfigError, match="no projector luna-projector version 7"):
        load_version(home.root, "luna-projector", 7)
    with pytest.raises(LunaConfigError, match="alias nightly"):
        load_version(home.root, "luna-projector", "nightly")


def test_projector_asset_registers_once_per_data_and_config(tiny_home):
    from dagster_project.definitions import build_definitions
    from luna_assets import ALL_ASSETS

    config = {"ops": {"projector": {"config": {"arch": "mlp", "hidden": 32, "rank": 8, "epochs": 2, "batch_size": 8}}}}
    defs = build_definitions(str(tiny_home.root))
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    first = job.execute_in_process(run_config=config, instance=instance)
    meta = first.asset_materializations_for_node("projector")[0].metadata
    assert meta["trained"].value is True and meta["promoted"].value is True and meta["version"].value == 1
    assert all(c.passed for c in first.get_asset_check_evaluations())
    again = job.execute_in_process(run_config=config, instance=instance, asset_selection=[dg.AssetKey("projector")])
    meta = again.asset_materializations_for_node("projector")[0].metadata
    assert meta["trained"].value is False and "same pairs" in meta["reason"].value

    specialist = {"ops": {"projector": {"config": {"arch": "linear", "rank": 4, "model_name": "luna-projector-no-comfy",
                                                   "where": "generator <> 'ComfyUI'",
                                                   "min_train_pairs": 8}}}}
    done = job.execute_in_process(run_config=specialist, instance=instance, asset_selection=[dg.AssetKey("projector")])
    assert done.asset_materializations_for_node("projector")[0].metadata["registered model"].value == "luna-projector-no-comfy"
    assert [v["subset"] for v in list_versions(tiny_home.root, "luna-projector-no-comfy")] == ["generator <> 'ComfyUI'"]


def test_cli_projector_list_and_condition(trained, tmp_path, capsys):
    from luna_cli.main import main
    from luna_core.index.build import update_index

    home, profile, good, score = trained
    update_index(home.catalog_path, home.root, profile)
    register(good, home.root, profile, score)
    assert main(["projector", "list", "--home", str(home.root)]) == 0
    assert "champion" in capsys.readouterr().out
    image = next(Path(home.roots()[0]).rglob("*_a1111_png.png"))
    out = tmp_path / "p.safetensors"
    assert main(["condition", str(image), "--projector", "models:/luna-projector@champion", "--home", str(home.root),
                 "--out", str(out)]) == 0
    from safetensors.numpy import load_file

    tensors = load_file(str(out))
    assert tensors["prompt_embeds"].shape == (1, 77, 96) and not tensors["negative_prompt_embeds"].any()
    assert main(["condition", str(image), "--projector", "luna-projector", "--home", str(home.root),
                 "--out", str(out)]) == 2


def test_unreachable_tracking_server_fails_before_any_training(trained):
    from luna_core.projector.pipeline import train_and_register

    home, profile, good, score = trained
    with pytest.raises(LunaConfigError, match="not reachable"):
        train_and_register(home.root, home.catalog_path, profile, ProjectorConfig(arch="linear"), SMALL,
                           uri="http://127.0.0.1:9")
    assert list_versions(home.root) == []


def test_corrupted_checkpoint_is_a_clear_error(trained, tmp_path):
    from luna_core.projector.registry import load_checkpoint, save_checkpoint

    home, profile, good, score = trained
    folder = save_checkpoint(good.model, good.config, tmp_path / "ckpt")
    (folder / "weights.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(LunaConfigError, match="corrupted"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(LunaConfigError, match="missing or corrupted"):
        load_checkpoint(folder)
