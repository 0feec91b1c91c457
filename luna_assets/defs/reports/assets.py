"""The `reports` domain: the refinement report (cheap, follows the index and the champion) and the
refinement benchmark (expensive, weekly and on demand). Neither takes the `gpu` pool that embeddings
need: a report or a benchmark in progress never delays a library change on its way to the index."""

import dagster as dg

from luna_assets.automation import AC
from luna_assets.defs.index.assets import FAISS_INDEX
from luna_assets.defs.projector.assets import PROJECTOR
from luna_assets.metadata import md_table
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.reports.benchmark import BENCHMARK_CODE_VERSION, BenchmarkSettings, run_benchmark
from luna_core.reports.evaluate import EvalSettings
from luna_core.reports.frozen_set import EmptyTestSet
from luna_core.reports.ordering import ordering_lines
from luna_core.reports.quality import QualitySettings
from luna_core.reports.render import HEADLINE_COLUMNS, headline_rows
from luna_core.reports.report import REPORT_CODE_VERSION, ReportSettings, build_report

REFINEMENT_REPORT = dg.AssetKey("refinement_report")
REFINEMENT_BENCHMARK = dg.AssetKey("refinement_benchmark")
# its own pool: the benchmark runs one at a time, beside the gpu pool's work
BENCHMARK_POOL = "benchmark"
_EVAL, _QUALITY, _BENCH = EvalSettings(), QualitySettings(), BenchmarkSettings()


class ReportConfig(dg.Config):
    """Launchpad settings of the report (defaults: luna_core's EvalSettings)."""

    max_test_images: int = _EVAL.max_images  # the frozen test set's size at most
    k: int = _EVAL.k
    bootstrap: int = _EVAL.bootstrap
    force: bool = False  # build a new report even when nothing it depends on changed
    # freeze a new test set (a new series; the report says the set changed)
    new_test_set: bool = False

    def settings(self) -> ReportSettings:
        return ReportSettings(
            evaluation=EvalSettings(
                max_images=self.max_test_images, k=self.k, bootstrap=self.bootstrap
            ),
            force=self.force,
            new_test_set=self.new_test_set,
        )


class BenchmarkConfig(dg.Config):
    """Launchpad settings of the benchmark (defaults: luna_core's BenchmarkSettings and
    QualitySettings)."""

    # test images refined by every source for the contact sheet
    sample_images: int = _QUALITY.images
    grid: int = _QUALITY.grid
    strength: float = _QUALITY.strength
    steps: int = _QUALITY.steps
    guidance: float = _QUALITY.guidance
    # regenerate at the UNet's native size, not the picture's own
    native_size: bool = _QUALITY.native_size
    batching_repeat: int = _BENCH.batching_repeat
    latency_repeat: int = _BENCH.latency_repeat
    k: int = _EVAL.k

    def settings(self) -> BenchmarkSettings:
        return BenchmarkSettings(
            evaluation=EvalSettings(k=self.k),
            quality=QualitySettings(
                images=self.sample_images,
                grid=self.grid,
                strength=self.strength,
                steps=self.steps,
                guidance=self.guidance,
                native_size=self.native_size,
            ),
            batching_repeat=self.batching_repeat,
            latency_repeat=self.latency_repeat,
        )


def _measure(
    measure,
    settings,
    context: dg.AssetExecutionContext,
    luna: LunaHomeResource,
    models: LunaModelsResource,
):
    """`measure(home, profile, settings, device, on_step)`'s outcome; for a library too small for a
    test image, a result that says so in the asset's metadata instead (the chain does not fail)."""
    home = luna.luna_home
    try:
        return measure(
            home, models.resolve(home), settings, device=models.device, on_step=context.log.info
        )
    except EmptyTestSet as exc:
        context.log.warning(f"nothing to measure: {exc}")
        return dg.MaterializeResult(
            metadata={"built": False, "reason": f"nothing to measure: {exc}"},
            data_version=dg.DataVersion("no test set"),
        )


def _source_float(report: dict, kind: str, metric: str, name: str | None = None) -> float:
    for source in report["sources"]:
        if source["kind"] == kind and (name is None or source["name"] == name):
            return round(float(source["summary"].get(metric, 0.0)), 5)
    return 0.0


@dg.asset(
    key=REFINEMENT_BENCHMARK,
    deps=[FAISS_INDEX, PROJECTOR],
    group_name="reports",
    kinds={"pytorch"},
    code_version=BENCHMARK_CODE_VERSION,
    # Expensive (minutes): never on a library change; the weekly_benchmark schedule, or on demand.
    pool=BENCHMARK_POOL,
)
def refinement_benchmark(
    context: dg.AssetExecutionContext,
    config: BenchmarkConfig,
    luna: LunaHomeResource,
    models: LunaModelsResource,
) -> dg.MaterializeResult:
    """Regeneration samples of the frozen test set through the chess refiner with every
    conditioning source, the sources' costs, and what true batching saves."""
    outcome = _measure(run_benchmark, config.settings(), context, luna, models)
    if isinstance(outcome, dg.MaterializeResult):
        return outcome
    result = outcome.result
    batching = result["costs"]["batching"]
    load = result["load"]["before"]
    batching_said = {}
    for workload, row in batching.items():  # whole refiner calls, batched vs --sequential
        batching_said[f"{workload}: batching speedup"] = dg.MetadataValue.float(
            round(row["speedup"], 3)
        )
        batching_said[f"{workload}: batched vs sequential, max pixel difference"] = (
            dg.MetadataValue.int(row["max_pixel_diff"])
        )
    return dg.MaterializeResult(
        metadata={
            "created": result["created"],
            "seconds": dg.MetadataValue.float(result["seconds"]),
            "machine load": f"{load['load_1min']} on {load['cores']} cores",
            "sample images": len((result.get("quality") or {}).get("sample_paths", [])),
            **batching_said,
            "folder": dg.MetadataValue.path(str(outcome.folder)),
        },
        data_version=dg.DataVersion(outcome.folder.name),
    )


@dg.asset(
    key=REFINEMENT_REPORT,
    deps=[FAISS_INDEX, PROJECTOR, REFINEMENT_BENCHMARK],
    group_name="reports",
    kinds={"mlflow", "python"},
    code_version=REPORT_CODE_VERSION,
    # Cheap (seconds): follows new index versions, champions and benchmarks, and does not wait for a
    # benchmark that has not run yet or is running (it shows the latest one, with its date).
    automation_condition=(
        AC.in_latest_time_window()
        & (
            AC.newly_missing()
            | AC.any_deps_match(
                (AC.data_version_changed() & ~AC.executed_with_root_target())
                | AC.will_be_requested()
            )
        ).since_last_handled()
        & ~AC.any_deps_match(AC.missing() & ~AC.will_be_requested()).ignore(
            dg.AssetSelection.assets(REFINEMENT_BENCHMARK)
        )
        & ~AC.any_deps_match(AC.in_progress()).ignore(
            dg.AssetSelection.assets(REFINEMENT_BENCHMARK)
        )
        & ~AC.in_progress()
    ).with_label("on a new index, champion or benchmark"),
)
def refinement_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    luna: LunaHomeResource,
    models: LunaModelsResource,
) -> dg.MaterializeResult:
    """Which conditioning source to trust: every source (true prompt, vault k-NN, each projector
    version, mean, empty) scored on the frozen, near-duplicate-clean test set, with a verdict
    and the latest benchmark."""
    outcome = _measure(build_report, config.settings(), context, luna, models)
    if isinstance(outcome, dg.MaterializeResult):
        return outcome
    report = outcome.report
    champion = report.get("champion")
    test_set = report["test_set"]
    benchmark = report.get("benchmark")
    metadata = {
        "built": outcome.built,
        "reason": outcome.reason,
        "verdict": dg.MetadataValue.md(report["verdict"]["text"]),
        "headline": md_table(headline_rows(report), list(HEADLINE_COLUMNS)),
        "report": dg.MetadataValue.path(str(outcome.html)),
        "markdown": dg.MetadataValue.path(str(outcome.markdown)),
        "test set": test_set["described"],
        "test images scored": test_set["scored"],
        "test images left out": dg.MetadataValue.json(
            {k: len(v) for k, v in test_set["excluded"].items()}
        ),
        "benchmark": benchmark["created"]
        if benchmark
        else "none yet: materialize refinement_benchmark",
        "regeneration ordering": dg.MetadataValue.md(
            "\n".join(f"- {line}" for line in ordering_lines(report))
        ),
        "profile": report["profile"],
        "vault token cosine": dg.MetadataValue.float(
            _source_float(report, "vault", "token_cosine")
        ),
        "champion token cosine": dg.MetadataValue.float(
            _source_float(report, "projector", "token_cosine", champion)
        ),
        "mean token cosine": dg.MetadataValue.float(_source_float(report, "mean", "token_cosine")),
        "empty token cosine": dg.MetadataValue.float(
            _source_float(report, "empty", "token_cosine")
        ),
        "vault R@1": dg.MetadataValue.float(_source_float(report, "vault", "R@1")),
    }
    if report.get("warning"):
        metadata["warning"] = report["warning"]
    if report.get("mlflow_run_id"):
        metadata["mlflow run"] = report["mlflow_run_id"]
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(outcome.folder.name))
