"""The refinement report: which conditioning to trust, with numbers and pictures.

The report is the cheap part: every source scored on the frozen test set
(luna_core.reports.frozen_set), the verdict, plots; seconds at thousands of images. The expensive
part (regeneration sample, costs, batching) is luna_core.reports.benchmark, run on its own
schedule; a report shows the latest benchmark with its date. A report is rebuilt only when its
inputs changed (index version, champion, test set, benchmark, code, settings), and writes a new
folder and MLflow run only when its figures changed.

    HOME/reports/
        latest.json                 {"folder": "20261129-113000", "inputs": {...}, "figures": "..."}
        test_set.json               the frozen test set of the current series
        benchmarks/                 the expensive part's results
        20261129-113000/            report.json, report.md, report.html (standalone), *.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from luna_core.ask.vault_query import VaultQuery
from luna_core.files import write_atomically
from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile
from luna_core.projector.registry import Registry
from luna_core.reports.benchmark import latest_benchmark
from luna_core.reports.evaluate import EvalSettings, Evaluation, evaluate, registered_projectors
from luna_core.reports.frozen_set import TestSet, load_test_set
from luna_core.reports.render import markdown, plots, standalone_html
from luna_core.reports.verdict import verdict

log = logging.getLogger(__name__)

# 4: the trained tiny world's wording, CLIP-T where comparable, the ordering check
REPORT_CODE_VERSION = "4"
EXPERIMENT = "luna-reports"
RANDOM_WEIGHTS_WARNING = (
    "This report was made with models of random weights. It checks the pipeline end to end; "
    "it makes no claim about quality."
)
TINY_WORLD_NOTE = (
    "This report was made with the tiny profile: small models trained on the sample generator's "
    "pictures (coloured shapes on patterned backgrounds) and their prompts. It checks the method "
    "end to "
    "end on that world, not SDXL quality."
)


def _metric_name(source: str) -> str:
    """A source's name as MLflow takes it in a metric key (letters, digits and underscores)."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", source).strip("_")


def profile_warning(profile: ModelProfile) -> str | None:
    if not profile.trained:
        return RANDOM_WEIGHTS_WARNING
    return TINY_WORLD_NOTE if profile.name == "tiny" else None


@dataclass(frozen=True)
class ReportSettings:
    evaluation: EvalSettings = EvalSettings()
    log_to_mlflow: bool = True
    force: bool = False  # build even when the inputs are unchanged
    new_test_set: bool = False  # start a new test series (the report says the set changed)


@dataclass
class ReportOutcome:
    built: bool
    reason: str
    folder: Path
    report: dict = field(default_factory=dict)

    @property
    def html(self) -> Path:
        return self.folder / "report.html"

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"


def _pointer(home: LunaHome) -> Path:
    return home.reports_dir / "latest.json"


def latest_report(home: LunaHome) -> tuple[Path, dict] | None:
    """The latest report of this report format (a report written by an older Luna is not shown: the
    next build replaces it)."""
    try:
        folder = home.reports_dir / json.loads(_pointer(home).read_text())["folder"]
        report = json.loads((folder / "report.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    return (
        (folder, report)
        if report.get("inputs", {}).get("code_version") == REPORT_CODE_VERSION
        else None
    )


def _latest_pointer(home: LunaHome) -> dict:
    try:
        return json.loads(_pointer(home).read_text())
    except (OSError, ValueError):
        return {}


def report_inputs(
    home: LunaHome,
    profile: ModelProfile,
    settings: ReportSettings,
    vault,
    test_set: TestSet,
    benchmark_folder: str | None,
) -> dict:
    """What a report depends on: a report with the same inputs is the same report."""
    versions = Registry(home, settings.evaluation.tracking_uri).versions(
        settings.evaluation.projector_name
    )
    champion = next((v.version for v in versions if v.is_champion), None)
    settings_text = json.dumps(asdict(_shaping(settings)), sort_keys=True, default=str)
    return {
        "index_version": vault.index.version.number,
        "champion_version": champion,
        "projector_versions": [v.version for v in versions],
        "test_series": test_set.frozen.series,
        "test_fingerprint": test_set.fingerprint(),
        "benchmark": benchmark_folder,
        "code_version": REPORT_CODE_VERSION,
        "vision_key": profile.vision_key,
        "text_key": profile.text_key,
        "settings": hashlib.sha256(settings_text.encode()).hexdigest()[:12],
    }


def _shaping(settings: ReportSettings) -> ReportSettings:
    """The settings that shape a report's figures (not the one-off flags)."""

    return replace(settings, force=False, new_test_set=False, log_to_mlflow=True)


def build_report(
    home: LunaHome,
    profile: ModelProfile,
    settings: ReportSettings = ReportSettings(),
    device: str = "auto",
    on_step=None,
) -> ReportOutcome:
    """Score every source on the frozen test set, say which to trust, and write the report files
    (with the latest benchmark's results), logged to MLflow; or, when nothing it depends on
    changed, or its figures came out the same, keep the latest report."""

    step = on_step or (lambda message: log.info(message))
    started = time.perf_counter()
    vault = VaultQuery(home, profile, device)
    test_set = load_test_set(
        home, settings.evaluation.max_images, settings.evaluation.seed, settings.new_test_set
    )
    benchmark = latest_benchmark(home)
    inputs = report_inputs(
        home, profile, settings, vault, test_set, benchmark[0].name if benchmark else None
    )
    previous = latest_report(home)
    fresh = settings.force or test_set.began_now
    if previous and not fresh and _latest_pointer(home).get("inputs") == inputs:
        return ReportOutcome(
            False,
            "inputs unchanged (index, champion, test set, benchmark, code): the latest report "
            "stands",
            previous[0],
            previous[1],
        )
    step(
        f"scoring every conditioning source on {len(test_set.pairs.image_ids)} test images "
        f"(series {test_set.frozen.series})"
    )
    projectors = registered_projectors(home, vault, settings.evaluation)
    evaluation = evaluate(home, profile, vault, settings.evaluation, projectors, test_set)
    champion_label = next((p.label for p in projectors if p.champion), None)
    report = _assemble(
        profile, vault, inputs, evaluation, settings.evaluation, champion_label, benchmark
    )
    if previous and not fresh and previous[1].get("figures") == report["figures"]:
        # Nothing new to say (an index version that moved no answer): no new folder, no new MLflow
        # run.
        write_atomically(
            _pointer(home),
            lambda tmp: tmp.write_text(
                json.dumps(
                    {"folder": previous[0].name, "inputs": inputs, "figures": report["figures"]}
                )
            ),
        )
        return ReportOutcome(
            False,
            f"figures unchanged (index v{inputs['index_version']}): the latest report stands",
            previous[0],
            previous[1],
        )
    report["seconds"] = round(time.perf_counter() - started, 2)
    folder = _write(home, report, evaluation, benchmark)
    if settings.log_to_mlflow:
        _log_to_mlflow(home, report, folder, settings)
    return ReportOutcome(
        True, "built" + (": a new test series began" if test_set.began_now else ""), folder, report
    )


_QUALITY_COLUMN = {"true": "true prompt", "vault": "vault", "mean": "mean", "empty": "empty"}


def _figures(report: dict) -> str:
    """A digest of what the report says: the scores, the verdict, the test set and the benchmark."""
    said = {
        "sources": [
            (s["name"], {k: round(v, 4) for k, v in s["summary"].items()})
            for s in report["sources"]
        ],
        "verdict": report["verdict"]["choice"],
        "excluded": report["test_set"]["excluded"],
        "series": report["test_set"]["series"],
        "benchmark": (report.get("benchmark") or {}).get("folder"),
    }
    return hashlib.sha256(json.dumps(said, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _assemble(
    profile,
    vault,
    inputs,
    evaluation: Evaluation,
    settings: EvalSettings,
    champion_label,
    benchmark: tuple[Path, dict] | None,
) -> dict:
    sources = []
    for s in evaluation.sources:
        column = _QUALITY_COLUMN.get(s.kind) or ("projector" if s.name == champion_label else None)
        sources.append(
            {
                "name": s.name,
                "kind": s.kind,
                "summary": s.summary,
                "intervals": {k: list(v) for k, v in s.intervals.items()},
                "quality_column": column,
            }
        )
    caveat = (
        "The tiny profile's models have random weights: this verdict checks the pipeline, not "
        "quality."
        if not profile.trained
        else "The tiny profile is trained on generated shapes: this verdict checks the method, "
        "not SDXL quality."
        if profile.name == "tiny"
        else None
    )
    said = verdict(evaluation, settings, caveat)
    test_set = evaluation.test_set
    plan = vault.index.meta.get("plan", {})
    report = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "inputs": inputs,
        "profile": profile.name,
        "vision_model": profile.vision_model,
        "vision_key": profile.vision_key,
        "sdxl_model": profile.sdxl_model,
        "text_key": profile.text_key,
        "warning": profile_warning(profile),
        "index_version": inputs["index_version"],
        "index": {"factory": plan.get("factory", "")},
        "projector_versions": [s.name for s in evaluation.sources if s.kind == "projector"],
        "champion": champion_label,
        "sources": sources,
        "verdict": {
            "choice": said.choice,
            "text": said.text,
            "evidence": {k: list(v) for k, v in said.evidence.items()},
        },
        "split_sizes": test_set.split_sizes,
        "train_pairs": evaluation.train_pairs,
        "test_set": {
            "series": test_set.frozen.series,
            "frozen_at": test_set.frozen.frozen_at,
            "reason": test_set.frozen.reason,
            "began_now": test_set.began_now,
            "members": len(test_set.frozen.members),
            "scored": len(test_set.pairs.image_ids),
            "excluded": test_set.excluded,
            "joined_since": test_set.joined_since,
            "fingerprint": test_set.fingerprint(),
            "described": test_set.describe(),
            "near_duplicate_cosine": profile.near_duplicate_cosine,
        },
        "benchmark": None,
    }
    if benchmark is not None:
        folder, result = benchmark
        report["benchmark"] = {
            "folder": folder.name,
            "created": result["created"],
            "load": result.get("load"),
            "index_version": result.get("index_version"),
            "test_series": result.get("test_series"),
            "quality": result.get("quality") or {},
            "costs": result["costs"],
            "seconds": result.get("seconds"),
        }
    report["figures"] = _figures(report)
    return report


def _write(
    home: LunaHome, report: dict, evaluation: Evaluation, benchmark: tuple[Path, dict] | None
) -> Path:
    """All files into a staging folder, renamed into place, then the `latest.json` pointer
    swapped."""
    home.reports_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=home.reports_dir))
    try:
        per_image = {
            ("vault" if s.kind == "vault" else s.name): s.per_image for s in evaluation.sources
        }
        champion = report.get("champion")
        if champion:
            per_image = {**per_image, "projector champion": per_image[champion]}
        images = plots(report, per_image, staging)
        sheet = benchmark[0] / "contact_sheet.png" if benchmark else None
        if sheet is not None and sheet.exists():
            shutil.copyfile(sheet, staging / "contact_sheet.png")
            images["contact_sheet"] = staging / "contact_sheet.png"
        text = markdown(report, {k: p.name for k, p in images.items()})
        (staging / "report.md").write_text(text)
        (staging / "report.html").write_text(standalone_html(text, images))
        (staging / "report.json").write_text(json.dumps(report, indent=2, default=str))
        name = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        folder = home.reports_dir / name
        suffix = 1
        while folder.exists():
            folder, suffix = home.reports_dir / f"{name}-{suffix}", suffix + 1
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_atomically(
        _pointer(home),
        lambda tmp: tmp.write_text(
            json.dumps(
                {"folder": folder.name, "inputs": report["inputs"], "figures": report["figures"]}
            )
        ),
    )
    return folder


def _log_to_mlflow(home: LunaHome, report: dict, folder: Path, settings: ReportSettings) -> None:
    registry = Registry(home, settings.evaluation.tracking_uri)
    metrics = [
        (
            f"{_metric_name(source['name'])}.{metric.replace('@', '_at_')}",
            float(value),
            0,
        )
        for source in report["sources"]
        for metric, value in source["summary"].items()
    ]
    tags = {
        "index_version": str(report["index_version"]),
        "champion": str(report.get("champion")),
        "projector_versions": ", ".join(report["projector_versions"]),
        "profile": report["profile"],
        "test_series": str(report["test_set"]["series"]),
        "test_fingerprint": report["test_set"]["fingerprint"],
        "verdict": str(report["verdict"]["choice"]),
        "report_folder": str(folder),
    }
    run_id, _ = registry.log_run(
        EXPERIMENT, folder.name, metrics=metrics, tags=tags, artifacts={"report": folder}
    )
    report["mlflow_run_id"] = run_id
    # The pointer already names this folder: replace report.json whole, never rewrite it in place.
    write_atomically(
        folder / "report.json",
        lambda tmp: tmp.write_text(json.dumps(report, indent=2, default=str)),
    )
