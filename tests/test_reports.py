"""The refinement report: honest numbers (ceiling, floor, intervals) on a frozen test set, a verdict
a person can act on, one self-contained HTML, MLflow, no rebuild when nothing changed, the
expensive benchmark apart from it, and the Dagster assets and CLI around them."""

from __future__ import annotations

import json
import re
import shutil

import dagster as dg
import numpy as np
import pytest

from luna_core.ask.vault_query import VaultQuery
from luna_core.index.store import index_store
from luna_core.models.profiles import resolve_profile
from luna_core.reports.benchmark import BenchmarkSettings, latest_benchmark, run_benchmark
from luna_core.reports.evaluate import (
    EvalSettings,
    Evaluation,
    LoadedProjector,
    SourceResult,
    evaluate,
    registered_projectors,
    summarize,
)
from luna_core.reports.frozen_set import load_test_set
from luna_core.reports.quality import QualitySettings
from luna_core.reports.report import EXPERIMENT, ReportSettings, build_report, latest_report
from luna_core.reports.verdict import MIN_IMAGES, verdict
from luna_core.vault.segments import open_text_store

SMALL = ReportSettings(evaluation=EvalSettings(bootstrap=200))
SMALL_BENCHMARK = BenchmarkSettings(
    quality=QualitySettings(images=1, grid=2, steps=2),
    batching_repeat=1,
    batching_steps=8,
    latency_repeat=2,
)


@pytest.fixture
def report_home(projector_home):
    return projector_home, resolve_profile("tiny", projector_home.models_dir)


def _folders(home) -> list[str]:
    return sorted(
        p.name for p in home.reports_dir.iterdir() if p.is_dir() and p.name != "benchmarks"
    )


def test_ceiling_floor_and_intervals(report_home):
    home, profile = report_home
    vault = VaultQuery(home, profile)
    champion = registered_projectors(home, vault, EvalSettings())[0].model
    # an unfitted ridge: random-free, all-zero answers
    broken_model = type(champion)(champion.config)
    evaluation = evaluate(
        home,
        profile,
        vault,
        EvalSettings(bootstrap=200),
        projectors=[LoadedProjector("champion", champion), LoadedProjector("broken", broken_model)],
    )
    true = evaluation.source("true")
    assert (
        np.allclose(true.per_image["token_cosine"], 1.0, atol=1e-3) and true.summary["R@1"] == 1.0
    )
    empty = evaluation.source("empty")
    tokens, pooled = vault.encode_prompt("")
    store = open_text_store(home, profile)
    first_row = load_test_set(home).pairs.prompt_rows[:1]
    truth = store.read_rows("prompt_embeds", first_row)[0].astype(np.float32)
    expected = np.mean(
        [np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(tokens, truth)]
    )
    assert empty.per_image["token_cosine"][0] == pytest.approx(expected, abs=1e-5), (
        "the empty source is encode('')"
    )
    by_name = {s.name: s for s in evaluation.sources}
    assert by_name["broken"].summary["token_cosine"] < by_name["champion"].summary["token_cosine"]
    for source in evaluation.sources:
        for metric, (low, high) in source.intervals.items():
            assert low - 1e-9 <= source.summary[metric] <= high + 1e-9, (source.name, metric)


def _evaluation(n: int, gains: dict[str, float], seed: int = 0) -> Evaluation:
    """An evaluation over n images where each source's token cosine is the mean's plus a gain and
    noise."""
    from luna_core.projector.pairs import Pairs
    from luna_core.reports.frozen_set import FrozenSet, TestSet

    rng = np.random.default_rng(seed)
    base = rng.uniform(0.80, 0.90, n)
    settings = EvalSettings(bootstrap=500)

    def source(name: str, kind: str, gain: float) -> SourceResult:
        values = base + gain + (rng.normal(0, 0.01, n) if kind != "mean" else 0)
        return SourceResult(
            name,
            kind,
            {
                "token_cosine": values,
                "pooled_cosine": values,
                "mse": 1 - values,
                "hit_at_1": np.zeros(n),
                "hit_at_5": np.ones(n),
            },
        )

    sources = [source("mean of train", "mean", 0.0)] + [
        source(name, "vault" if name.startswith("vault") else "projector", gain)
        for name, gain in gains.items()
    ]
    for s in sources:
        summarize(s, None if s.kind == "mean" else sources[0], settings)
    ids = np.arange(n, dtype=np.int64)
    test_set = TestSet(
        FrozenSet(1, "now", "first report", []), False, Pairs(ids, ids, ids), [], [], {}
    )
    return Evaluation(test_set, sources, 100, (np.zeros(1), np.zeros(1)))


def test_the_verdict_names_the_source_its_evidence_supports():
    settings = EvalSettings(bootstrap=500)
    clear = verdict(_evaluation(60, {"vault k=5": 0.05, "projector v1 @champion": 0.0}), settings)
    assert clear.choice == "vault k=5" and clear.text.startswith("**Use vault k=5**")
    assert "[+0.0" in clear.text, "the evidence is given with its interval"

    both = verdict(_evaluation(60, {"vault k=5": 0.05, "projector v1 @champion": 0.0502}), settings)
    assert (
        both.choice in ("vault k=5", "projector v1 @champion")
        and " or " in both.text
        and "includes 0" in both.text
    )

    ahead = verdict(_evaluation(60, {"vault k=5": 0.02, "projector v1 @champion": 0.06}), settings)
    assert (
        ahead.choice == "projector v1 @champion"
        and "beats the mean conditioning and vault k=5" in ahead.text
    )

    neither = verdict(
        _evaluation(60, {"vault k=5": 0.0, "projector v1 @champion": -0.01}), settings
    )
    assert neither.choice is None and neither.text.startswith("**Use neither**")

    few = verdict(_evaluation(MIN_IMAGES - 1, {"vault k=5": 0.05}), settings)
    assert (
        few.choice is None
        and "Too little evidence" in few.text
        and f"{MIN_IMAGES - 1} test images" in few.text
    )


def test_report_files_mlflow_and_no_rebuild_when_unchanged(report_home):
    home, profile = report_home
    first = build_report(home, profile, SMALL)
    assert first.built and first.html.exists() and first.markdown.exists()
    assert (
        first.report["benchmark"] is None
        and "No benchmark has run yet" in first.markdown.read_text()
    )

    run_benchmark(home, profile, SMALL_BENCHMARK)
    second = build_report(home, profile, SMALL)
    assert second.built, "a new benchmark is something new to say"
    html = second.html.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html), (
        "the HTML references nothing outside itself"
    )
    assert html.count("data:image/png;base64,") >= 3 and "sample generator" in html
    report = json.loads((second.folder / "report.json").read_text())
    assert {s["kind"] for s in report["sources"]} == {
        "true",
        "literal",
        "vault",
        "projector",
        "mean",
        "empty",
    }
    batching = report["benchmark"]["costs"]["batching"]
    assert sorted(name.split()[0] for name in batching) == ["chess", "detailer,"], batching
    assert all(row["max_pixel_diff"] <= 2 and row["items"] > 1 for row in batching.values()), (
        batching
    )
    assert (
        report["benchmark"]["load"]["before"]["cores"] >= 1
        and "machine load" in second.markdown.read_text()
    )
    text = second.markdown.read_text()
    assert text.splitlines()[2] == report["verdict"]["text"], "the verdict is the first paragraph"
    assert re.search(r"\| \d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] n=1 \|", text), (
        "CLIP-I carries its interval and n"
    )

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(home.default_tracking_uri())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development", (
        "a classic ML experiment"
    )
    runs = mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")
    assert len(runs) == 2 and {r.data.tags["index_version"] for r in runs} == {
        str(report["index_version"])
    }
    artifacts = {a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id, "report")}
    assert {"report/report.html", "report/metrics.png"} <= artifacts

    folders = _folders(home)
    again = build_report(home, profile, SMALL)
    assert not again.built and again.folder == second.folder and _folders(home) == folders, (
        "no new report"
    )

    # A new index version that moves no answer (a rebuild of the same vectors): nothing new to say.
    from luna_core.index.build import update_index

    update_index(home, profile, rebuild=True)
    same = build_report(home, profile, SMALL)
    assert not same.built and "figures unchanged" in same.reason and _folders(home) == folders
    assert len(mlflow.search_runs(experiment_names=[EXPERIMENT], output_format="list")) == 2
    assert latest_report(home)[0] == second.folder


def test_the_test_set_stays_frozen_as_the_library_changes(report_home, sample_library, monkeypatch):
    from luna_core.catalog.library_view import build_library
    from luna_core.index.build import update_index
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.samples import make_sample_library
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    home, profile = report_home

    def refresh():
        ingest(
            home.catalog_path, [str(sample_library.root)], IngestOptions(workers=1, progress=False)
        )
        embed_images(home, profile, EmbedOptions(progress=False))
        embed_prompts(home, profile, EmbedOptions(progress=False))
        build_library(home, profile)
        update_index(home, profile)

    first = build_report(home, profile, SMALL).report["test_set"]
    assert (
        first["series"] == 1
        and first["began_now"]
        and "changed with this report" in first["described"]
    )
    members = load_test_set(home).frozen.members

    # New images join the test split; growth alone starts no new series here (that rule has its own
    # test).
    monkeypatch.setattr("luna_core.reports.frozen_set.GROWTH_FOR_NEW_SERIES", 1000.0)
    make_sample_library(sample_library.root / "later", 60, seed=5, size=(96, 96), broken=False)
    refresh()
    grown = load_test_set(home)
    assert grown.frozen.members == members and not grown.began_now, (
        "new images do not enter the frozen set"
    )
    assert grown.joined_since > 0 and "joined the library since the freeze" in grown.describe()

    # A member deleted: left out, by name and reason, and the series goes on.
    gone = grown.paths[0]
    for path in [
        p
        for p in sample_library.root.rglob("*")
        if p.is_file() and p.read_bytes() == open(gone, "rb").read()
    ]:
        path.unlink()
    refresh()
    after = build_report(home, profile, SMALL).report["test_set"]
    assert after["series"] == 1 and not after["began_now"]
    assert (
        after["excluded"] == {"left the library": [gone]} and after["scored"] == first["scored"] - 1
    )

    renewed = build_report(
        home, profile, ReportSettings(evaluation=EvalSettings(bootstrap=200), new_test_set=True)
    )
    described = renewed.report["test_set"]["described"]
    assert (
        renewed.built
        and renewed.report["test_set"]["series"] == 2
        and "changed with this report" in described
    )
    assert renewed.report["test_set"]["scored"] >= after["scored"], (
        "the new series takes the grown split"
    )


def test_a_test_split_grown_to_twice_the_set_starts_a_new_series(report_home, sample_library):
    from luna_core.catalog.library_view import build_library
    from luna_core.index.build import update_index
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.samples import make_sample_library
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    home, profile = report_home
    first = load_test_set(home)
    # Enough to at least double the test split whatever the near-duplicate links decide (they move a
    # few images).
    make_sample_library(sample_library.root / "later", 160, seed=5, size=(96, 96), broken=False)
    ingest(home.catalog_path, [str(sample_library.root)], IngestOptions(workers=1, progress=False))
    embed_images(home, profile, EmbedOptions(progress=False))
    embed_prompts(home, profile, EmbedOptions(progress=False))
    build_library(home, profile)
    update_index(home, profile)
    grown = load_test_set(home)
    assert grown.began_now and grown.frozen.series == first.frozen.series + 1
    assert grown.frozen.reason.startswith("the test split grew from")
    assert len(grown.frozen.members) >= 2 * len(first.frozen.members)


def test_report_and_benchmark_assets_and_cli(report_home, capsys, monkeypatch, tmp_path):
    from luna_assets.defs.reports.assets import (
        BENCHMARK_POOL,
        refinement_benchmark,
        refinement_report,
    )
    from luna_assets.resources import LunaHomeResource, LunaModelsResource
    from luna_cli.main import main
    from luna_core.reports.ordering import clip_i_cell

    home, _ = report_home
    assert main(["report", "--home", str(home.root)]) == 3, "no report yet"
    resources = {"luna": LunaHomeResource(home=str(home.root)), "models": LunaModelsResource()}
    config = {
        "ops": {
            "refinement_benchmark": {
                "config": {
                    "sample_images": 1,
                    "grid": 2,
                    "steps": 2,
                    "batching_repeat": 1,
                    "latency_repeat": 2,
                }
            },
            "refinement_report": {"config": {"bootstrap": 200}},
        }
    }
    result = dg.materialize(
        [refinement_benchmark, refinement_report],
        resources=resources,
        run_config=config,
        instance=dg.DagsterInstance.ephemeral(),
    )
    metadata = result.asset_materializations_for_node("refinement_report")[0].metadata
    assert metadata["built"].value is True and "vault k=5" in metadata["headline"].value
    assert metadata["verdict"].value.startswith("**") and "series 1" in metadata["test set"].value
    assert 0 < metadata["vault token cosine"].value <= 1 and metadata["report"].value.endswith(
        "report.html"
    )
    assert metadata["benchmark"].value == latest_benchmark(home)[1]["created"]
    assert "- true prompt >= vault: " in metadata["regeneration ordering"].value, (
        "each claim, said in words"
    )
    again = dg.materialize(
        [refinement_report],
        resources=resources,
        run_config={"ops": {"refinement_report": config["ops"]["refinement_report"]}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert (
        again.asset_materializations_for_node("refinement_report")[0].metadata["built"].value
        is False
    )
    # Neither takes the pool the embeddings need.
    from luna_assets.automation import GPU_POOL
    from luna_assets.defs.vault.assets import vision_embeddings

    assert (
        refinement_benchmark.op.pool == BENCHMARK_POOL != GPU_POOL
        and refinement_report.op.pool is None
    )
    assert vision_embeddings.op.pool == GPU_POOL

    capsys.readouterr()
    assert main(["report", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert (
        "true prompt" in out
        and "report.html" in out
        and "sample generator" in out
        and "Test set: series 1" in out
    )

    # --open without a display: says where the report is, exits 0, starts nothing.
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(
        shutil, "which", lambda name: "/usr/bin/xdg-open" if name == "xdg-open" else None
    )
    monkeypatch.setattr(
        "subprocess.Popen", lambda *a, **k: pytest.fail("no opener may start without a display")
    )
    assert main(["report", "--open", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert (
        "No browser can be opened here" in out
        and str(latest_report(home)[0] / "report.html") in out
    )
    assert clip_i_cell([]) == "—" and clip_i_cell([0.5, 0.7]).endswith("n=2")


def test_a_benchmark_in_progress_does_not_delay_an_index_update(
    report_home, sample_library, tmp_path, monkeypatch
):
    """The home's own Dagster instance (its pools: one `gpu` slot on a CPU): while a benchmark run
    is held mid-step, a deletion goes through ingest, the embedding assets (which take the gpu
    pool), the catalog and the index, and leaves the index; the benchmark then finishes."""
    import threading

    import luna_assets.defs.reports.assets as report_assets
    from luna_assets.definitions import build_definitions
    from luna_assets.resources import LunaHomeResource, LunaModelsResource
    from luna_core.home.settings import Settings
    from luna_core.index.store import load_index
    from luna_core.operations.dagster_instance import ensure_instance

    home, profile = report_home
    instance = dg.DagsterInstance.from_config(
        str(ensure_instance(tmp_path / "dagster", Settings({}, {})).parent)
    )
    assert "default_limit: 1" in (tmp_path / "dagster" / "dagster.yaml").read_text()
    defs = build_definitions(str(home.root))
    resources = {
        "luna": LunaHomeResource(home=str(home.root), workers=1),
        "models": LunaModelsResource(),
    }
    held, release, outcome = threading.Event(), threading.Event(), {}
    real_benchmark = report_assets.run_benchmark

    def held_benchmark(*args, **kwargs):
        held.set()
        assert release.wait(600), "the test never released the benchmark"
        return real_benchmark(*args, **kwargs)

    monkeypatch.setattr(report_assets, "run_benchmark", held_benchmark)

    def materialize(keys: list[str], name: str, config: dict | None = None) -> None:
        outcome[name] = dg.materialize(
            list(defs.assets),
            selection=[dg.AssetKey(k) for k in keys],
            resources=resources,
            instance=instance,
            run_config=config or {},
            raise_on_error=False,
        ).success

    benchmark = threading.Thread(
        target=materialize,
        args=(
            ["refinement_benchmark"],
            "benchmark",
            {
                "ops": {
                    "refinement_benchmark": {
                        "config": {
                            "sample_images": 1,
                            "grid": 2,
                            "steps": 2,
                            "batching_repeat": 1,
                            "latency_repeat": 2,
                        }
                    }
                }
            },
        ),
    )
    benchmark.start()
    assert held.wait(300), "the benchmark step started"

    index = load_index(index_store(home, profile))
    gone = index.lookup.column("path")[0].as_py()
    content = open(gone, "rb").read()
    for path in [
        p for p in sample_library.root.rglob("*") if p.is_file() and p.read_bytes() == content
    ]:
        path.unlink()
    update = threading.Thread(
        target=materialize,
        args=(
            [
                "ingested_images",
                "vision_embeddings",
                "text_conditionings",
                "luna_catalog",
                "faiss_index",
            ],
            "update",
        ),
    )
    update.start()
    update.join(300)  # a bound for a deadlock, not a race: the update needs seconds
    try:
        assert not update.is_alive(), "the index update waited behind the benchmark"
        assert benchmark.is_alive() and not release.is_set(), "the benchmark was still held"
        assert outcome["update"] is True
        after = load_index(index_store(home, profile))
        assert (
            gone not in after.lookup.column("path").to_pylist()
            and after.version.number > index.version.number
        )
    finally:
        release.set()
        benchmark.join(600)
    assert outcome.get("benchmark") is True


def test_a_library_without_a_scorable_test_image_reports_nothing_and_fails_nothing(report_home):
    import duckdb

    from luna_assets.defs.reports.assets import refinement_benchmark, refinement_report
    from luna_assets.resources import LunaHomeResource, LunaModelsResource

    home, _ = report_home
    with duckdb.connect(str(home.catalog_path)) as con:
        con.execute("UPDATE splits SET split = 'train' WHERE split = 'test'")
    resources = {"luna": LunaHomeResource(home=str(home.root)), "models": LunaModelsResource()}
    result = dg.materialize(
        [refinement_benchmark, refinement_report],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    for key in ("refinement_benchmark", "refinement_report"):
        metadata = result.asset_materializations_for_node(key)[0].metadata
        assert (
            metadata["built"].value is False
            and "no image with both an embedding" in metadata["reason"].value
        )
    assert latest_report(home) is None and latest_benchmark(home) is None


def test_a_report_of_an_older_format_is_not_shown_and_is_replaced(report_home):
    home, profile = report_home
    first = build_report(home, profile, SMALL)
    data = json.loads((first.folder / "report.json").read_text())
    data["inputs"]["code_version"] = "1"  # as a report written by an older Luna
    (first.folder / "report.json").write_text(json.dumps(data))
    assert latest_report(home) is None
    again = build_report(home, profile, SMALL)
    assert again.built and latest_report(home)[0] == again.folder


def test_the_champion_is_found_among_other_aliases(report_home):
    from luna_core.projector.registry import Registry

    home, profile = report_home
    registry = Registry(home)
    # sorts before champion
    registry.client.set_registered_model_alias("luna-projector", "a-first", "1")
    # holds the word, is not it
    registry.client.set_registered_model_alias("luna-projector", "champion-old", "1")
    (projector,) = registered_projectors(home, VaultQuery(home, profile), EvalSettings())
    assert "@a-first" in projector.label and projector.champion, projector.label
    assert registry.champion().aliases == ("a-first", "champion", "champion-old")
    registry.client.delete_registered_model_alias("luna-projector", "champion")
    assert registry.champion() is None, "an alias that holds the word is not @champion"
    (projector,) = registered_projectors(home, VaultQuery(home, profile), EvalSettings())
    assert not projector.champion


def test_a_series_whose_images_all_left_gives_way_to_a_new_one(report_home):
    import duckdb

    home, _ = report_home
    first = load_test_set(home)
    with duckdb.connect(
        str(home.catalog_path)
    ) as con:  # every frozen member leaves the scorable set
        con.execute(
            "UPDATE splits SET split = 'train' WHERE content_hash IN (SELECT unnest(?::VARCHAR[]))",
            [first.frozen.members],
        )
        con.execute(
            "UPDATE splits SET split = 'test' WHERE content_hash IN (SELECT content_hash FROM "
            "library "
            "WHERE split = 'train' AND prompt_row IS NOT NULL AND content_hash NOT IN "
            "(SELECT unnest(?::VARCHAR[])) LIMIT 3)",
            [first.frozen.members],
        )
    second = load_test_set(home)
    assert (
        second.began_now
        and second.frozen.series == 2
        and "can be scored any more" in second.frozen.reason
    )
    # The images moved to test (those with no near-duplicate left in train) make the new set.
    assert second.frozen.members and not set(second.frozen.members) & set(first.frozen.members)
    assert len(second.pairs.image_ids) == len(second.frozen.members) <= 3
