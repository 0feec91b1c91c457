"""Projectors in MLflow: register, promote only a better one, load by alias, refuse what does not
fit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from luna_core.errors import CorruptStoreError, LunaConfigError, NotBuiltError
from luna_core.projector.models import ProjectorConfig
from luna_core.projector.promotion import register, verify_champion
from luna_core.projector.registry import Registry
from luna_core.projector.request import ProjectorRequest
from luna_core.projector.train import TrainSettings, train_projector, validation_scorer

SMALL = TrainSettings(epochs=3, min_train_pairs=8, min_val_pairs=2, batch_size=8)


@pytest.fixture
def trained(library_home):
    home, profile = library_home
    good = train_projector(home, profile, ProjectorConfig(arch="linear", rank=8), SMALL)
    score = validation_scorer(home, profile)
    return home, profile, good, score


def test_only_a_better_candidate_becomes_champion(trained):
    home, profile, good, score = trained
    first = register(Registry(home), good, profile, score)
    assert (first.version, first.promoted) == (1, True)
    # an unfitted model: all-zero answers
    worse = replace(good, model=type(good.model)(good.config))
    second = register(Registry(home), worse, profile, score)
    assert (second.version, second.promoted) == (
        2,
        False,
    ) and second.candidate_score > second.champion_score
    better_margin = register(Registry(home), good, profile, score, ProjectorRequest(margin=10.0))
    assert better_margin.promoted is False, "a candidate must beat the champion by the margin"
    versions = {v.version: v for v in Registry(home).versions()}
    assert versions[1].aliases == ("champion",) and versions[2].promoted == "False"
    assert all(v.fingerprint == good.data_fingerprint for v in versions.values())
    assert (
        Registry(home).champion().version == 1
        and Registry(home).resolve("luna-projector", "champion") == 1
    )
    model, config = Registry(home).load("luna-projector", "champion")
    x = torch.randn(3, config.in_dim)
    with torch.no_grad():
        np.testing.assert_allclose(model(x)[0].numpy(), good.model(x)[0].numpy(), atol=1e-5)


def test_the_registry_leaves_the_process_wide_mlflow_uri_alone(trained, monkeypatch):
    """Two homes in one process (the service, the report, a notebook) each keep their own
    registry."""
    import mlflow

    home, profile, good, score = trained
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    before = mlflow.get_tracking_uri()
    registry = Registry(home)
    register(registry, good, profile, score)
    assert (
        registry.champion().version == 1
        and registry.load("luna-projector", "champion")[1].in_dim == 48
    )
    assert (
        mlflow.get_tracking_uri() == before
        and "MLFLOW_TRACKING_URI" not in __import__("os").environ
    )
    assert registry.client is registry.client, "one client per registry"


def test_pyfunc_model_maps_embeddings_to_flat_conditionings(trained):
    import mlflow

    home, profile, good, score = trained
    register(Registry(home), good, profile, score)
    mlflow.set_tracking_uri(home.default_tracking_uri())
    model = mlflow.pyfunc.load_model("models:/luna-projector@champion")
    out = model.predict(np.zeros((2, 48), np.float32))
    assert out.shape == (2, 77 * 96 + 48)
    assert len(model.metadata.get_input_schema().inputs) == 48, (
        "one input column per embedding dimension"
    )


def test_widths_that_do_not_fit_and_missing_versions_are_clear_errors(trained):
    home, profile, good, score = trained
    register(Registry(home), good, profile, score)
    with pytest.raises(LunaConfigError, match="trained for other encoders"):
        Registry(home).load("luna-projector", 1, expect={"width": 2048})
    with pytest.raises(NotBuiltError, match="no projector luna-projector version 7"):
        Registry(home).load("luna-projector", 7)
    with pytest.raises(NotBuiltError, match="alias nightly"):
        Registry(home).load("luna-projector", "nightly")


def test_projector_asset_registers_once_per_data_and_config(tiny_home):
    from luna_assets.definitions import build_definitions

    config = {
        "ops": {
            "projector": {
                "config": {"arch": "mlp", "hidden": 32, "rank": 8, "epochs": 2, "batch_size": 8}
            }
        }
    }
    defs = build_definitions(str(tiny_home.root))
    job = defs.resolve_implicit_global_asset_job_def()
    instance = dg.DagsterInstance.ephemeral()
    first = job.execute_in_process(run_config=config, instance=instance)
    meta = first.asset_materializations_for_node("projector")[0].metadata
    assert (
        meta["trained"].value is True
        and meta["promoted"].value is True
        and meta["version"].value == 1
    )
    assert all(c.passed for c in first.get_asset_check_evaluations())
    again = job.execute_in_process(
        run_config=config, instance=instance, asset_selection=[dg.AssetKey("projector")]
    )
    meta = again.asset_materializations_for_node("projector")[0].metadata
    assert meta["trained"].value is False and "same pairs" in meta["reason"].value
    # Every launchpad setting that changes the result trains anew: epochs, lr, seed.
    for change in ({"epochs": 3}, {"lr": 5e-4}, {"seed": 1}):
        changed = {
            "ops": {"projector": {"config": {**config["ops"]["projector"]["config"], **change}}}
        }
        run = job.execute_in_process(
            run_config=changed, instance=instance, asset_selection=[dg.AssetKey("projector")]
        )
        assert (
            run.asset_materializations_for_node("projector")[0].metadata["trained"].value is True
        ), change
    # The version's config tag is the checkpoint's own: tiny widths, not SDXL's.
    import json

    tag = json.loads(
        Registry(tiny_home).client.get_model_version("luna-projector", "1").tags["config"]
    )
    assert (tag["in_dim"], tag["width"], tag["pooled_width"]) == (48, 96, 48)

    specialist = {
        "ops": {
            "projector": {
                "config": {
                    "arch": "linear",
                    "rank": 4,
                    "model_name": "luna-projector-no-comfy",
                    "where": "generator <> 'ComfyUI'",
                    "min_train_pairs": 8,
                    "min_val_pairs": 1,
                }
            }
        }
    }
    done = job.execute_in_process(
        run_config=specialist, instance=instance, asset_selection=[dg.AssetKey("projector")]
    )
    assert (
        done.asset_materializations_for_node("projector")[0].metadata["registered model"].value
        == "luna-projector-no-comfy"
    )
    assert [v.subset for v in Registry(tiny_home).versions("luna-projector-no-comfy")] == [
        "generator <> 'ComfyUI'"
    ]


def test_cli_projector_list_and_condition(trained, tmp_path, capsys):
    from luna_cli.main import main
    from luna_core.index.build import update_index

    home, profile, good, score = trained
    update_index(home, profile)
    register(Registry(home), good, profile, score)
    assert main(["projector", "list", "--home", str(home.root)]) == 0
    assert "champion" in capsys.readouterr().out
    image = next(Path(home.roots()[0]).rglob("*_a1111_png.png"))
    out = tmp_path / "p.safetensors"
    assert (
        main(
            [
                "condition",
                str(image),
                "--projector",
                "models:/luna-projector@champion",
                "--home",
                str(home.root),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from safetensors.numpy import load_file

    tensors = load_file(str(out))
    assert (
        tensors["prompt_embeds"].shape == (1, 77, 96)
        and not tensors["negative_prompt_embeds"].any()
    )
    assert (
        main(
            [
                "condition",
                str(image),
                "--projector",
                "luna-projector",
                "--home",
                str(home.root),
                "--out",
                str(out),
            ]
        )
        == 2
    )


def test_unreachable_tracking_server_fails_before_any_training(trained):
    from luna_core.projector.pipeline import train_and_register

    home, profile, good, score = trained
    with pytest.raises(LunaConfigError, match="not reachable"):
        train_and_register(
            home,
            profile,
            ProjectorRequest(
                ProjectorConfig(arch="linear"), SMALL, tracking_uri="http://127.0.0.1:9"
            ),
        )
    assert Registry(home).versions() == []


def test_corrupted_checkpoint_is_a_clear_error(trained, tmp_path):
    from luna_core.projector.checkpoints import load_checkpoint, save_checkpoint

    home, profile, good, score = trained
    folder = save_checkpoint(good.model, good.config, tmp_path / "ckpt")
    (folder / "weights.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(CorruptStoreError, match="corrupted"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CorruptStoreError, match="missing or corrupted"):
        load_checkpoint(folder)


def test_training_that_never_gives_a_finite_val_loss_is_refused(library_home, monkeypatch):
    from luna_core.projector import train
    from luna_core.projector.pipeline import train_and_register

    home, profile = library_home
    with pytest.raises(LunaConfigError, match="epochs must be at least 1"):
        train_projector(home, profile, ProjectorConfig(arch="mlp"), replace(SMALL, epochs=0))
    real = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: {**real(*a, **k), "loss": float("nan")})
    with pytest.raises(LunaConfigError, match="no finite validation loss"):
        train_and_register(
            home, profile, ProjectorRequest(ProjectorConfig(arch="mlp", hidden=16, rank=4), SMALL)
        )
    assert Registry(home).versions() == [], "nothing registered"


def test_champion_check_fails_when_the_champion_is_not_the_best(trained):
    home, profile, good, score = trained
    registry = Registry(home)
    register(Registry(home), good, profile, score)
    worse = replace(good, model=type(good.model)(good.config))
    register(Registry(home), worse, profile, score)
    assert verify_champion(registry, score).passed
    # a person moved it by hand
    registry.client.set_registered_model_alias("luna-projector", "champion", "2")
    verdict = verify_champion(registry, score)
    assert not verdict.passed and "beaten by v1" in verdict.description
    registry.client.set_registered_model_alias("luna-projector", "champion", "1")
    # a forged score
    registry.client.set_model_version_tag("luna-projector", "1", "candidate_val_loss", "0.000001")
    verdict = verify_champion(registry, score)
    assert not verdict.passed and "not its recorded" in verdict.description


def test_pyfunc_accepts_any_float_array_and_dataframes(trained):
    import warnings

    import mlflow
    import pandas as pd

    home, profile, good, score = trained
    register(Registry(home), good, profile, score)
    mlflow.set_tracking_uri(home.default_tracking_uri())
    model = mlflow.pyfunc.load_model("models:/luna-projector@champion")
    x = np.random.default_rng(0).normal(size=(2, 48))
    as_float32 = model.predict(x.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no non-writable-array warning from torch
        # float64: numpy's default
        np.testing.assert_allclose(model.predict(x), as_float32, atol=1e-5)
        np.testing.assert_allclose(model.predict(pd.DataFrame(x)), as_float32, atol=1e-5)


def test_projectors_at_a_configured_tracking_uri_are_reachable_from_the_cli(
    trained, tmp_path, capsys, monkeypatch
):
    from luna_cli.main import main

    home, profile, good, score = trained
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    register(Registry(home, elsewhere), good, profile, score)
    assert main(["projector", "list", "--home", str(home.root)]) == 1, (
        "nothing in the home's own registry"
    )
    capsys.readouterr()
    assert main(["projector", "list", "--home", str(home.root), "--tracking-uri", elsewhere]) == 0
    assert "champion" in capsys.readouterr().out
    image = next(Path(home.roots()[0]).rglob("*_a1111_png.png"))
    out = tmp_path / "p.safetensors"
    assert (
        main(
            [
                "condition",
                str(image),
                "--projector",
                "models:/luna-projector@champion",
                "--home",
                str(home.root),
                "--tracking-uri",
                elsewhere,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    monkeypatch.setenv("LUNA_MLFLOW_URI", elsewhere)
    assert main(["projector", "list", "--home", str(home.root)]) == 0


def test_projector_answers_check_their_inputs_like_the_vault(trained):
    from luna_core.ask.vault_query import QueryError, VaultQuery

    home, profile, good, score = trained
    register(Registry(home), good, profile, score)
    image = next(Path(home.roots()[0]).rglob("*_a1111_png.png"))
    vault = VaultQuery(home, profile)
    for alpha in (2.0, -0.1, float("nan")):
        with pytest.raises(QueryError, match="alpha"):
            vault.condition_with_projector(
                image, "models:/luna-projector@champion", prompt="a cat", mode="blend", alpha=alpha
            )


def test_subset_filters_can_read_but_never_write(library_home):
    import duckdb

    from luna_core.projector.pairs import load_pairs

    home, profile = library_home
    assert len(load_pairs(home, "train", "generator <> 'ComfyUI'").image_ids) > 0
    for hostile in (
        "1=1); DELETE FROM images; SELECT (1",
        "EXISTS (SELECT * FROM read_csv('/etc/passwd'))",
        "1=1) UNION ALL (SELECT 1, 1, 1 FROM (DELETE FROM images RETURNING 1)",
    ):
        with pytest.raises(LunaConfigError, match="subset filter"):
            load_pairs(home, "train", hostile)
    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM images").fetchone()[0] > 0


def test_model_names_cannot_change_a_registry_search(trained):
    from luna_core.projector.registry import name_filter

    home, profile, good, score = trained
    register(Registry(home), good, profile, score)
    assert Registry(home).versions("x' OR name LIKE '%") == [], (
        "a quote in a name matches nothing else"
    )
    assert name_filter("it's") == 'name="it\'s"'
    with pytest.raises(LunaConfigError, match="quote"):
        name_filter("""both ' and " """)
