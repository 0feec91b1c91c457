"""The refinement report: honest numbers (ceiling, floor, intervals), one self-contained HTML, MLflow, no
rebuild when nothing changed, and the Dagster asset and CLI around it."""

from __future__ import annotations

import json
import re

import dagster as dg
import numpy as np
import pytest

from luna_core.models.profiles import resolve_profile
from luna_core.reports.evaluate import EvalSettings, evaluate, registered_projectors
from luna_core.reports.quality import QualitySettings
from luna_core.reports.report import EXPERIMENT, ReportSettings, build_report, latest_report
from luna_core.vault.query import Vault

SMALL = ReportSettings(evaluation=EvalSettings(bootstrap=200), quality=QualitySettings(images=1, grid=2, steps=2),
                       batching_repeat=1, batching_steps=8)


@pytest.fixture
def report_home(projector_home):
    return projector_home, resolve_profile("tiny", projector_home.models_dir)


def test_ceiling_floor_and_intervals(report_home):
    home, profile = report_home
    vault = Vault(home, profile)
    champion = registered_projectors(home, vault, EvalSettings())
    broken_model = type(champion[0][1])(champion[0][1].config)  # an unfitted ridge: random-free, all-zero answers
    evaluation = evaluate(home, profile, vault, EvalSettings(bootstrap=200),
                          projectors=[("champion", champion[0][1]), ("broken", broken_model)])
    true = evaluation.source("true")
    assert np.allclose(true.per_image["token_cosine"], 1.0, atol=1e-3) and true.summary["R@1"] == 1.0
    empty = evaluation.source("empty")
    tokens, pooled = vault.encode_prompt("")
    store = home.open_text_store(profile)
    from luna_core.reports.evaluate import test_pairs

    first_row = test_pairs(home, EvalSettings()).prompt_rows[:1]
    truth = store.read_rows("prompt_embeds", first_row)[0].astype(np.float32)
    expected = np.mean([np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(tokens, truth)])
    assert empty.per_image["token_cosine"][0] == pytest.approx(expected, abs=1e-5), "the empty source is encode('')"
    by_name = {s.name: s for s in evaluation.sources}
    assert by_name["broken"].summary["token_cosine"] < by_name["champion"].summary["token_cosine"]
    for source in evaluation.sources:
        for metric, (low, high) in source.intervals.items():
            assert low - 1e-9 <= source.summary[metric] <= high + 1e-9, (source.name, metric)


def test_report_files_mlflow_and_no_rebuild_when_unchanged(report_home):
    home, profile = report_home
    first = build_report(home, profile, SMALL)
    assert first.built and first.html.exists() and first.markdown.exists()
    html = first.html.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), "the HTML references nothing outside itself"
    assert html.count("data:image/png;base64,") >= 3 and "random weights" in html
    report = json.loads((first.folder / "report.json").read_text())
    assert {s["kind"] for s in report["sources"]} == {"true", "vault", "projector", "mean", "empty"}
    assert report["costs"]["batching"]["chess 5x5, 25 tiles in 2 passes"]["max_item_diff"] <= 1e-5

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(home.default_tracking_uri())
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    assert len(runs) == 1 and runs[0].data.tags["index_version"] == str(report["index_version"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/report.html", "report/metrics.png"} <= artifacts

    folders = sorted(p.name for p in home.reports_dir.iterdir() if p.is_dir())
    again = build_report(home, profile, SMALL)
    assert not again.built and again.folder == first.folder
    assert sorted(p.name for p in home.reports_dir.iterdir() if p.is_dir()) == folders, "no new report"
    assert latest_report(home)[0] == first.folder


def test_report_asset_and_cli(report_home, capsys):
    from dagster_project.resources import LunaHomeResource, LunaModelsResource
    from luna_assets.reports import refinement_report
    from luna_cli.main import main

    home, _ = report_home
    assert main(["report", "--home", str(home.root)]) == 3, "no report yet"
    resources = {"luna": LunaHomeResource(home=str(home.root)), "models": LunaModelsResource()}
    config = {"ops": {"refinement_report": {"config": {"sample_images": 1, "grid": 2, "steps": 2,
                                                       "batching_repeat": 1, "bootstrap": 200}}}}
    result = dg.materialize([refinement_report], resources=resources, run_config=config,
                            instance=dg.DagsterInstance.ephemeral())
    metadata = result.asset_materializations_for_node("refinement_report")[0].metadata
    assert metadata["built"].value is True and "vault k=5" in metadata["headline"].value
    assert 0 < metadata["vault token cosine"].value <= 1 and metadata["report"].value.endswith("report.html")
    again = dg.materialize([refinement_report], resources=resources, run_config=config,
                           instance=dg.DagsterInstance.ephemeral())
    assert again.asset_materializations_for_node("refinement_report")[0].metadata["built"].value is False
    capsys.readouterr()
    assert main(["report", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert "true prompt" in out and "report.html" in out and "random weights" in out
