"""The `reports` domain: the refinement benchmark report, the last asset of the chain."""

import dagster as dg

from dagster_project.resources import LunaHomeResource, LunaModelsResource
from luna_assets.automation import GPU_POOL, on_upstream_change
from luna_assets.index import FAISS_INDEX
from luna_assets.metadata import md_table
from luna_assets.projector import PROJECTOR
from luna_core.reports.evaluate import EvalSettings
from luna_core.reports.quality import QualitySettings
from luna_core.reports.render import HEADLINE_COLUMNS, headline_rows
from luna_core.reports.report import REPORT_CODE_VERSION, ReportSettings, build_report
from luna_core.settings import LunaHome

REFINEMENT_REPORT = dg.AssetKey("refinement_report")
_EVAL, _QUALITY, _REPORT = EvalSettings(), QualitySettings(), ReportSettings()


class ReportConfig(dg.Config):
    """Launchpad settings of the report (defaults: luna_core's EvalSettings, QualitySettings, ReportSettings)."""

    max_test_images: int = _EVAL.max_images
    k: int = _EVAL.k
    bootstrap: int = _EVAL.bootstrap
    sample_images: int = _QUALITY.images  # test images refined by every source for the contact sheet
    grid: int = _QUALITY.grid
    strength: float = _QUALITY.strength
    steps: int = _QUALITY.steps
    batching_repeat: int = _REPORT.batching_repeat
    force: bool = False  # build a new report even when nothing it depends on changed

    def settings(self) -> ReportSettings:
        return ReportSettings(
            evaluation=EvalSettings(max_images=self.max_test_images, k=self.k, bootstrap=self.bootstrap),
            quality=QualitySettings(images=self.sample_images, grid=self.grid, strength=self.strength, steps=self.steps),
            batching_repeat=self.batching_repeat, force=self.force)


def _source_float(report: dict, kind: str, metric: str, name: str | None = None) -> float:
    for source in report["sources"]:
        if source["kind"] == kind and (name is None or source["name"] == name):
            return round(float(source["summary"].get(metric, 0.0)), 5)
    return 0.0


@dg.asset(
    key=REFINEMENT_REPORT,
    deps=[FAISS_INDEX, PROJECTOR],
    group_name="reports",
    kinds={"mlflow", "python"},
    code_version=REPORT_CODE_VERSION,
    # Follows new index and projector versions; a run whose inputs are unchanged writes no new report.
    automation_condition=on_upstream_change(),
    pool=GPU_POOL,
)
def refinement_report(context: dg.AssetExecutionContext, config: ReportConfig, luna: LunaHomeResource,
                      models: LunaModelsResource) -> dg.MaterializeResult:
    """A benchmark report comparing every conditioning source (true prompt, vault k-NN, each projector version, mean, empty) on the frozen test split, with regeneration samples, costs and the batching speedup."""
    home = luna.luna_home
    outcome = build_report(home, models.resolve(home), config.settings(), device=models.device,
                           on_step=context.log.info)
    report = outcome.report
    champion = report.get("champion")
    batching = report["costs"]["batching"]
    metadata = {
        "built": outcome.built, "reason": outcome.reason,
        "headline": md_table(headline_rows(report), list(HEADLINE_COLUMNS)),
        "report": dg.MetadataValue.path(str(outcome.html)),
        "markdown": dg.MetadataValue.path(str(outcome.markdown)),
        "projector vs mean": report.get("projector_verdict") or "no champion projector",
        "profile": report["profile"], "test images": report["split_sizes"].get("test scored", 0),
        "vault token cosine": dg.MetadataValue.float(_source_float(report, "vault", "token_cosine")),
        "champion token cosine": dg.MetadataValue.float(_source_float(report, "projector", "token_cosine", champion)),
        "mean token cosine": dg.MetadataValue.float(_source_float(report, "mean", "token_cosine")),
        "empty token cosine": dg.MetadataValue.float(_source_float(report, "empty", "token_cosine")),
        "vault R@1": dg.MetadataValue.float(_source_float(report, "vault", "R@1")),
        "chess batching speedup": dg.MetadataValue.float(round(batching["chess 5x5, 25 tiles in 2 passes"]["speedup"], 3)),
        "detailer batching speedup": dg.MetadataValue.float(round(batching["detailer, 9 crops"]["speedup"], 3)),
    }
    if report.get("warning"):
        metadata["warning"] = report["warning"]
    if report.get("mlflow_run_id"):
        metadata["mlflow run"] = report["mlflow_run_id"]
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(outcome.folder.name))


def definitions(home: LunaHome | None = None) -> dg.Definitions:
    return dg.Definitions(assets=[refinement_report])
