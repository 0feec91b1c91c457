"""The refinement benchmark report: which conditioning to trust, with numbers and pictures.

A report is rebuilt only when its inputs changed (index version, champion version, test-split
fingerprint, report code version and settings); an unchanged rerun reads a few small files and stops.

    HOME/reports/
        latest.json                 {"folder": "20261129-113000", "inputs": {...}}
        20261129-113000/            report.json, report.md, report.html (standalone), *.png
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from luna_core.errors import LunaError
from luna_core.models.profiles import ModelProfile
from luna_core.reports.evaluate import (
    EvalSettings,
    Evaluation,
    evaluate,
    registered_projectors,
    split_fingerprint,
    test_pairs,
)
from luna_core.reports.quality import QualitySettings, refine_sample
from luna_core.reports.render import markdown, plots, standalone_html
from luna_core.settings import LunaHome

log = logging.getLogger(__name__)

REPORT_CODE_VERSION = "1"
EXPERIMENT = "luna-reports"
RANDOM_WEIGHTS_WARNING = ("This report was made with the tiny profile: its encoders and UNet have random weights. "
                          "It checks the pipeline end to end; it makes no claim about quality.")


@dataclass(frozen=True)
class ReportSettings:
    evaluation: EvalSettings = EvalSettings()
    quality: QualitySettings = QualitySettings()
    batching_repeat: int = 3
    batching_steps: int = 8
    log_to_mlflow: bool = True
    force: bool = False  # build even when the inputs are unchanged


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


def latest_report(home: LunaHome) -> tuple[Path, dict] | None:
    pointer = home.reports_dir / "latest.json"
    try:
        folder = home.reports_dir / json.loads(pointer.read_text())["folder"]
        return folder, json.loads((folder / "report.json").read_text())
    except (OSError, ValueError, KeyError):
        return None


def report_inputs(home: LunaHome, profile: ModelProfile, settings: ReportSettings, vault, pairs) -> dict:
    """What a report depends on: a report with the same inputs is the same report."""
    from luna_core.projector.registry import list_versions

    versions = list_versions(home, settings.evaluation.projector_name, uri=settings.evaluation.tracking_uri)
    champion = next((v["version"] for v in versions if "champion" in v["aliases"].split(",")), None)
    settings_text = json.dumps(asdict(settings), sort_keys=True, default=str)
    return {"index_version": vault.index.version.number, "champion_version": champion,
            "projector_versions": [v["version"] for v in versions],
            "test_fingerprint": split_fingerprint(pairs),
            "code_version": REPORT_CODE_VERSION, "vision_key": profile.vision_key, "text_key": profile.text_key,
            "settings": hashlib.sha256(settings_text.encode()).hexdigest()[:12]}


def build_report(home: LunaHome, profile: ModelProfile, settings: ReportSettings = ReportSettings(),
                 device: str = "auto", on_step=None) -> ReportOutcome:
    """Evaluate every source, refine a sample, measure costs and batching, write the report files, log
    them to MLflow; or, when nothing it depends on changed, return the latest report untouched."""
    from luna_core.vault.query import Vault

    step = on_step or (lambda message: log.info(message))
    vault = Vault(home, profile, device)
    pairs = test_pairs(home, settings.evaluation)
    inputs = report_inputs(home, profile, settings, vault, pairs)
    previous = latest_report(home)
    if previous and not settings.force and previous[1].get("inputs") == inputs:
        return ReportOutcome(False, "inputs unchanged (index, champion, test split, code): the latest report stands",
                             previous[0], previous[1])
    started = time.perf_counter()
    step("scoring every conditioning source on the test split")
    projectors = registered_projectors(home, vault, settings.evaluation)
    evaluation = evaluate(home, profile, vault, settings.evaluation, projectors, pairs)
    champion_label = next((label for label, _ in projectors if "@champion" in label), None)
    step("refining a sample of test images with each source")
    quality, sheet, sampler = _quality(home, profile, vault, evaluation, projectors, settings, device)
    step("measuring costs and what batching saves")
    costs = _costs(home, vault, projectors, evaluation, sampler, settings)
    report = _assemble(home, profile, vault, inputs, evaluation, quality, costs, champion_label)
    folder = _write(home, report, evaluation, sheet)
    report["seconds"] = time.perf_counter() - started
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    if settings.log_to_mlflow:
        _log_to_mlflow(home, report, folder, settings)
    return ReportOutcome(True, "built", folder, report)


def _quality(home: LunaHome, profile: ModelProfile, vault, evaluation: Evaluation, projectors, settings, device):
    from luna_core.images import read_picture
    from luna_core.refine.conditioning import Conditioner, SourceSettings
    from luna_core.refine.refiner import Refiner
    from luna_core.refine.sampler import ItemConditioning

    pairs = evaluation.pairs
    refiner = Refiner(home, profile, SourceSettings("vault", k=settings.evaluation.k), device=device)
    count = min(settings.quality.images, len(pairs.image_ids))
    if count == 0:
        return {}, None, refiner.sampler
    chosen = np.sort(np.random.default_rng(settings.quality.seed).choice(len(pairs.image_ids), count, replace=False))
    rows = vault.index.rows_for(pairs.image_ids[chosen])
    paths = [vault.index.lookup.column("path")[int(r)].as_py() for r in rows]
    images, kept = [], []
    for position, path in zip(chosen, paths):
        try:
            images.append(read_picture(path))
            kept.append(position)
        except LunaError as exc:  # a file gone since the index was built: the sample shrinks, says so
            log.warning("report sample image left out: %s", exc)
    text = home.open_text_store(profile)
    true_rows = pairs.prompt_rows[kept]
    empty_tokens, empty_pooled = vault.encode_prompt("")
    zeros = (np.zeros(text.fields["prompt_embeds"], np.float32), np.zeros(text.fields["pooled_prompt_embeds"], np.float32))
    tokens = text.read_rows("prompt_embeds", true_rows).astype(np.float32)
    pooled = text.read_rows("pooled_prompt_embeds", true_rows).astype(np.float32)
    mean_item = ItemConditioning(*evaluation.mean_conditioning, *zeros)
    whole = {"true prompt": [ItemConditioning(t, p, *zeros) for t, p in zip(tokens, pooled)],
             "mean": [mean_item] * len(images),
             "empty": [ItemConditioning(empty_tokens, empty_pooled, *zeros)] * len(images)}
    per_tile = {"vault": refiner.conditioner}
    champion = next((model for label, model in projectors if "@champion" in label), None)
    if champion is not None:
        per_tile["projector"] = Conditioner(vault, SourceSettings("projector"), projector=(champion, None))
    result = refine_sample(refiner, images, [int(pairs.image_ids[i]) for i in kept], whole, per_tile, settings.quality)
    result.sample_paths = [paths[list(chosen).index(i)] for i in kept]
    return ({"clip_i": result.clip_i, "sample_paths": result.sample_paths, "clip_t": result.clip_t,
             "settings": asdict(settings.quality)}, result.sheet, refiner.sampler)


def _latency(fn, batch: int, repeat: int = 20) -> float:
    """Median milliseconds per image of fn() answering `batch` images."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000 / batch)
    return float(np.median(times))


def _costs(home: LunaHome, vault, projectors, evaluation: Evaluation, sampler, settings: ReportSettings) -> dict:
    from luna_core.projector.models import parameter_count
    from luna_core.refine.batching import batching_table
    from luna_core.refine.sampler import SamplerSettings
    from luna_core.vault.segments import store_bytes

    meta = vault.index.meta
    embeddings = home.open_vision_store(vault.profile).read("embeds", evaluation.pairs.vision_rows[:64]).astype(np.float32)
    one = embeddings[:1]
    batch = np.resize(embeddings, (64, embeddings.shape[1]))
    answer_times = []
    for e in embeddings[:50]:
        started = time.perf_counter()
        vault.vault_answer(e, settings.evaluation.k, settings.evaluation.temperature)
        answer_times.append((time.perf_counter() - started) * 1000)
    text_mb = store_bytes(home.text_store(vault.profile)) / 1e6
    index_mb = (meta.get("index_bytes", 0) + meta.get("lookup_bytes", 0)) / 1e6
    rows = [{"source": "true prompt", "parameters": "SDXL text encoders", "MB": "", "ms_batch_1": None,
             "ms_per_image_batch_64": None, "notes": "needs the prompt: the ceiling"},
            {"source": f"vault k={settings.evaluation.k}", "parameters": 0, "MB": f"{index_mb + text_mb:.2f}",
             "ms_batch_1": float(np.median(answer_times)), "ms_per_image_batch_64": float(np.median(answer_times)),
             "notes": "index + conditioning store; answers one image at a time"}]
    for label, model in projectors:
        rows.append({"source": label, "parameters": parameter_count(model),
                     "MB": f"{sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6:.2f}",
                     "ms_batch_1": _latency(lambda m=model: vault.projector_answers(m, one), 1),
                     "ms_per_image_batch_64": _latency(lambda m=model: vault.projector_answers(m, batch), 64, 5),
                     "notes": ""})
    for name in ("mean of train", "empty prompt"):
        rows.append({"source": name, "parameters": 0, "MB": "one row", "ms_batch_1": 0.0, "ms_per_image_batch_64": 0.0,
                     "notes": "a constant"})
    for row in rows:
        for key in ("ms_batch_1", "ms_per_image_batch_64"):
            if isinstance(row[key], float):
                row[key] = round(row[key], 4)
    side = sampler.native_size * 4
    picture = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    text = home.open_text_store(vault.profile)
    widths = (*text.fields["prompt_embeds"], text.fields["pooled_prompt_embeds"][0])
    table = batching_table(sampler, picture, SamplerSettings(steps=settings.batching_steps, strength=0.5, batch_size=64),
                           settings.batching_repeat, widths)
    tile, crop = table.pop("tile"), table.pop("crop")
    return {"sources": rows, "index": {"recall_at_10": float(meta.get("recall_at_10", 0.0)),
                                       "p50_ms": float(meta.get("p50_ms", 0.0)), "p99_ms": float(meta.get("p99_ms", 0.0)),
                                       "mb": index_mb, "factory": meta.get("plan", {}).get("factory", "")},
            "vault_answer_p50_ms": float(np.percentile(answer_times, 50)),
            "vault_answer_p99_ms": float(np.percentile(answer_times, 99)),
            "batching": table, "batching_sizes": {"tile": tile, "crop": crop}}


_QUALITY_COLUMN = {"true": "true prompt", "vault": "vault", "mean": "mean", "empty": "empty"}


def _assemble(home, profile, vault, inputs, evaluation: Evaluation, quality, costs, champion_label) -> dict:
    sources = []
    for s in evaluation.sources:
        column = _QUALITY_COLUMN.get(s.kind) or ("projector" if s.name == champion_label else None)
        sources.append({"name": s.name, "kind": s.kind, "summary": s.summary,
                        "intervals": {k: list(v) for k, v in s.intervals.items()}, "quality_column": column})
    verdict = None
    champion = next((s for s in evaluation.sources if s.name == champion_label), None)
    if champion is not None:
        low, high = champion.intervals["token_cosine_minus_mean"]
        gain = champion.summary["token_cosine_minus_mean"]
        verdict = (f"the champion's token cosine is {gain:+.4f} over the mean conditioning "
                   f"(95 % interval [{low:+.4f}, {high:+.4f}]): "
                   + ("it beats the mean beyond its interval." if low > 0 else
                      "it is worse than the mean conditioning on this library." if high < 0 else
                      "the interval includes 0: it does not clearly beat the mean on this library."))
    plan = vault.index.meta.get("plan", {})
    return {"created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "inputs": inputs,
            "profile": profile.name, "vision_model": profile.vision_model, "vision_key": profile.vision_key,
            "sdxl_model": profile.sdxl_model, "text_key": profile.text_key,
            "warning": RANDOM_WEIGHTS_WARNING if profile.name == "tiny" else None,
            "index_version": inputs["index_version"], "index": {"factory": plan.get("factory", "")},
            "projector_versions": [s.name for s in evaluation.sources if s.kind == "projector"],
            "champion": champion_label, "split_sizes": evaluation.split_sizes,
            "test_fingerprint": evaluation.test_fingerprint, "sources": sources, "projector_verdict": verdict,
            "quality": quality, "costs": costs}


def _write(home: LunaHome, report: dict, evaluation: Evaluation, sheet) -> Path:
    """All files into a staging folder, renamed into place, then the `latest.json` pointer swapped."""
    home.reports_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=home.reports_dir))
    try:
        per_image = {("vault" if s.kind == "vault" else s.name): s.per_image for s in evaluation.sources}
        champion = report.get("champion")
        if champion:
            per_image = {**per_image, "projector champion": per_image[champion]}
        images = plots(report, per_image, staging)
        if sheet is not None:
            sheet.save(staging / "contact_sheet.png")
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
    pointer = home.reports_dir / "latest.json"
    tmp = pointer.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"folder": folder.name, "inputs": report["inputs"]}))
    os.replace(tmp, pointer)
    return folder


def _log_to_mlflow(home: LunaHome, report: dict, folder: Path, settings: ReportSettings) -> None:
    import re

    from luna_core.projector.registry import _mlflow, resolve_tracking_uri

    uri = resolve_tracking_uri(home, settings.evaluation.tracking_uri)
    home.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow = _mlflow(uri)
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        location = None if uri.startswith(("http://", "https://")) else home.mlflow_artifacts()
        experiment_id = mlflow.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=folder.name) as run:
        for source in report["sources"]:
            key = re.sub(r"[^A-Za-z0-9_]+", "_", source["name"]).strip("_")
            mlflow.log_metrics({f"{key}.{metric.replace('@', '_at_')}": float(value)
                                for metric, value in source["summary"].items()})
        mlflow.set_tags({"index_version": str(report["index_version"]), "champion": str(report.get("champion")),
                         "projector_versions": ", ".join(report["projector_versions"]), "profile": report["profile"],
                         "test_fingerprint": report["test_fingerprint"], "report_folder": str(folder)})
        mlflow.log_artifacts(str(folder), artifact_path="report")
    report["mlflow_run_id"] = run.info.run_id
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))

