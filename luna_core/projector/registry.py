"""Projector checkpoints in MLflow: log a run, register a version, promote it only when it beats the
champion on the same validation pairs, and load any version back by alias or number.

Checkpoints are safetensors plus a JSON config, never pickle; the logged `pyfunc` model wraps
them, so `mlflow.pyfunc.load_model("models:/luna-projector@champion")` maps image embeddings
[N, in_dim] to flattened conditionings [N, 77*D + P].
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna_core.config import KEYS_BY_NAME
from luna_core.errors import CorruptStoreError, LunaConfigError, NotBuiltError

# Re-exported: models registered before checkpoints.py existed import ProjectorPyfunc from this module.
from luna_core.projector.checkpoints import (  # noqa: F401
    ProjectorPyfunc,
    load_checkpoint,
    model_card,
    save_checkpoint,
)
from luna_core.projector.models import ProjectorConfig, parameter_count
from luna_core.projector.request import CHAMPION, REGISTERED_NAME, ProjectorRequest
from luna_core.settings import LunaHome

TRACKING_URI_ENV = KEYS_BY_NAME["operations.tracking_uri"].env
# Bit noise between scoring at registration and re-scoring from the stored checkpoint.
RESCORE_TOLERANCE = 1e-4


def resolve_tracking_uri(home: LunaHome, uri: str | None = None) -> str:
    """The registry to use: the URI given, else $LUNA_MLFLOW_URI, else `[operations] tracking_uri` of the
    home's luna.toml (a `luna mlflow-server`), else the home's embedded sqlite store."""
    return home.settings({"operations.tracking_uri": uri}).text("operations.tracking_uri") or home.default_tracking_uri()


def _embedded_registry_missing(home: LunaHome, uri: str) -> bool:
    """True when `uri` is the home's embedded store and nothing was ever registered there: reading it
    must not create a database in a home that has none."""
    return uri == home.default_tracking_uri() and not (home.mlflow_dir / "mlflow.db").exists()


def name_filter(name: str) -> str:
    """An MLflow search filter matching one registered model name, quoted so the name cannot change it."""
    if "'" not in name:
        return f"name='{name}'"
    if '"' not in name:
        return f'name="{name}"'
    raise LunaConfigError(f"registered model name {name!r} holds both kinds of quote; choose a plainer name")


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """A remote tracking server must answer before anything is logged: nothing half-registered."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s).close()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise LunaConfigError(f"MLflow tracking server {uri} is not reachable ({getattr(exc, 'reason', exc)}); "
                              "start it, or leave the tracking URI empty for the embedded sqlite store") from None


def _mlflow(uri: str):
    import logging

    import mlflow

    check_reachable(uri)
    # A checkpoint is a few files: MLflow's download bar would only clutter the CLI's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, "No data"); Luna's
# experiments hold training runs and reports: the classic view.
EXPERIMENT_KIND_TAG, CLASSIC_ML = "mlflow.experimentKind", "custom_model_development"


def ensure_experiment(mlflow, home: LunaHome, uri: str, name: str) -> str:
    """The id of experiment `name`, created (artifacts under the home unless a server decides) as a
    classic ML experiment; an existing one without a kind gets the classic kind too."""
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)
        return experiment.experiment_id
    tags = {EXPERIMENT_KIND_TAG: CLASSIC_ML}
    if uri.startswith(("http://", "https://")):
        return mlflow.create_experiment(name, tags=tags)  # the server decides where artifacts go
    return mlflow.create_experiment(name, artifact_location=home.mlflow_artifacts(), tags=tags)


# ---------------------------------------------------------------- registry


@dataclass
class Registration:
    name: str
    version: int
    run_id: str
    candidate_score: float
    champion_version: int | None
    champion_score: float | None
    promoted: bool
    decision: str


def register(result, home: LunaHome, profile, scorer, request: ProjectorRequest = ProjectorRequest()) -> Registration:
    """Log the training run, register a version, and move @champion only if the candidate's val loss
    beats the champion's on the same pairs by `request.margin`. `scorer(model) -> val loss`; its
    `fingerprint` names the validation pairs and is recorded with the score."""
    uri = resolve_tracking_uri(home, request.tracking_uri)
    home.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow = _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    name, config = request.name, result.config
    params = parameter_count(result.model)
    card = model_card(config, result.val_metrics, result.data_fingerprint, profile.name, result.train_pairs, params,
                      request.where)
    staging = Path(tempfile.mkdtemp(prefix="luna-projector-"))
    try:
        checkpoint = save_checkpoint(result.model, config, staging / "checkpoint", card)
        experiment_id = ensure_experiment(mlflow, home, uri, name)
        # `config` is the checkpoint's own (widths from the stores), so the tag says what the weights are.
        version_tags = {"data_fingerprint": result.data_fingerprint, "profile": profile.name,
                        "vision_key": profile.vision_key, "text_key": profile.text_key, "arch": config.arch,
                        "subset": request.where or "", "code_version": request.code_version,
                        "training_identity": request.training_identity(),
                        "config": json.dumps(config.to_dict(), sort_keys=True), **request.tags}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{config.arch}-{result.data_fingerprint[:8]}") as run:
            mlflow.log_params({**config.to_dict(), **request.settings.__dict__, "params": params,
                               "train_pairs": result.train_pairs, "val_pairs": result.val_pairs,
                               "subset": request.where or ""})
            for row in result.history:
                mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
            mlflow.log_metrics({f"final_val_{k}": float(v) for k, v in result.val_metrics.items()})
            mlflow.log_artifacts(str(checkpoint), artifact_path="checkpoint")
            mlflow.set_tags(version_tags)
            info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                           artifacts={"checkpoint": str(checkpoint)}, signature=_signature(config),
                                           input_example=np.zeros((1, config.in_dim)),
                                           pip_requirements=["torch", "safetensors", "numpy"])
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Luna projectors: CLIP-ViT image embedding → SDXL conditioning")
        version = mlflow.register_model(info.model_uri, name, tags=version_tags)
        number = int(version.version)
    except MlflowException as exc:
        raise LunaConfigError(f"MLflow at {uri} refused the run: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    candidate = float(scorer(result.model))
    champion_version, champion_score = None, None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion_version = int(current.version)
    except MlflowException:
        current = None
    if current is not None:
        try:
            champion_model, _ = load_version(home, name, champion_version, expect=_widths(config), uri=uri)
            champion_score = float(scorer(champion_model))
        except LunaConfigError as exc:  # a champion that no longer fits the encoders cannot defend its title
            champion_score = None
            client.set_model_version_tag(name, str(champion_version), "luna_unusable", str(exc)[:250])
    margin = request.margin
    if champion_score is None or candidate < champion_score - margin:
        client.set_registered_model_alias(name, CHAMPION, str(number))
        promoted = True
        decision = ("no usable champion: promoted" if champion_score is None else
                    f"val loss {candidate:.5f} beats champion v{champion_version} ({champion_score:.5f}) by more than {margin}")
    else:
        promoted = False
        decision = (f"val loss {candidate:.5f} does not beat champion v{champion_version} ({champion_score:.5f}) "
                    f"by more than {margin}: registered, not promoted")
    scored = {"candidate_val_loss": f"{candidate:.6f}", "val_fingerprint": getattr(scorer, "fingerprint", ""),
              "margin": str(margin), "champion_val_loss": "" if champion_score is None else f"{champion_score:.6f}",
              "promoted": str(promoted), "decision": decision}
    for key, value in scored.items():
        client.set_model_version_tag(name, str(number), key, value)
    return Registration(name, number, run.info.run_id, candidate, champion_version, champion_score, promoted, decision)


def _signature(config: ProjectorConfig):
    """Inputs: `in_dim` unnamed double columns, so float32, float64 and int arrays all pass MLflow's
    schema check (it refuses a tensor of another float width); outputs: the flattened conditioning."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

    return ModelSignature(inputs=Schema([ColSpec(DataType.double) for _ in range(config.in_dim)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config.out_dim))]))


@dataclass
class ChampionVerdict:
    passed: bool
    description: str
    metadata: dict


def verify_champion(home: LunaHome, scorer, name: str = REGISTERED_NAME, uri: str | None = None) -> ChampionVerdict:
    """Is @champion really the best? Its checkpoint is re-scored on the scorer's validation pairs and must
    reproduce its recorded val loss, which must be the lowest (within each version's margin) among the
    versions scored on the same pairs."""
    uri = resolve_tracking_uri(home, uri)
    if _embedded_registry_missing(home, uri):
        return ChampionVerdict(False, f"no registry at {uri} yet", {})
    _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return ChampionVerdict(False, f"{name} has no @champion", {})
    fingerprint = getattr(scorer, "fingerprint", "")
    recorded = champion.tags.get("candidate_val_loss", "")
    meta = {"champion": f"v{champion.version}", "recorded val loss": recorded, "val pairs": fingerprint}
    if champion.tags.get("val_fingerprint") != fingerprint:
        return ChampionVerdict(True, f"@champion v{champion.version} was scored on other validation pairs (the "
                                     "library changed); the next candidate is compared with it afresh", meta)
    model, _ = load_version(home, name, champion.version, uri=uri)
    rescored = float(scorer(model))
    meta["re-scored val loss"] = f"{rescored:.6f}"
    if not recorded or abs(rescored - float(recorded)) > RESCORE_TOLERANCE * max(1.0, abs(rescored)):
        return ChampionVerdict(False, f"@champion v{champion.version}'s stored checkpoint scores {rescored:.6f}, "
                                      f"not its recorded {recorded or '(none)'}", meta)
    better = []
    for version in client.search_model_versions(name_filter(name)):
        tags = version.tags
        if version.version == champion.version or tags.get("val_fingerprint") != fingerprint:
            continue
        loss, margin = float(tags.get("candidate_val_loss", "inf")), float(tags.get("margin", "0") or 0)
        if loss < rescored - margin - RESCORE_TOLERANCE:
            better.append(f"v{version.version} ({loss:.6f})")
    meta["versions scored on the same pairs that beat it"] = ", ".join(better) or "none"
    if better:
        return ChampionVerdict(False, f"@champion v{champion.version} ({rescored:.6f}) is beaten by "
                                      f"{', '.join(better)} on the same validation pairs", meta)
    return ChampionVerdict(True, f"@champion v{champion.version} has the lowest val loss on these pairs "
                                 f"({rescored:.6f}, re-scored from its checkpoint)", meta)


def _widths(config: ProjectorConfig) -> dict:
    return {"in_dim": config.in_dim, "seq_len": config.seq_len, "width": config.width, "pooled_width": config.pooled_width}


def parse_model_uri(uri: str) -> tuple[str, str]:
    """'models:/name@alias' or 'models:/name/3' → (name, alias-or-version)."""
    if not uri.startswith("models:/"):
        raise LunaConfigError(f"projector reference {uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri[len("models:/"):]
    if "@" in rest:
        name, ref = rest.split("@", 1)
    elif "/" in rest:
        name, ref = rest.rsplit("/", 1)
    else:
        raise LunaConfigError(f"projector reference {uri!r} names no alias or version")
    return name, ref


def resolve_version(home: LunaHome, name: str, ref: int | str, uri: str | None = None) -> str:
    """The version number an alias (or number) names now, without loading the checkpoint."""
    uri = resolve_tracking_uri(home, uri)
    if _embedded_registry_missing(home, uri):
        raise NotBuiltError(f"no projector is registered in {home.root} yet")
    _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version(name, str(ref)) if str(ref).isdigit() else \
            client.get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        raise NotBuiltError(f"no projector {name}@{ref} in {uri} ({str(exc).splitlines()[0][:160]})") from None
    return str(version.version)


def load_version(home: LunaHome, name: str, ref: int | str, expect: dict | None = None, uri: str | None = None):
    """A registered projector by version number or alias, loaded from its safetensors checkpoint."""
    uri = resolve_tracking_uri(home, uri)
    if _embedded_registry_missing(home, uri):
        raise NotBuiltError(f"no projector is registered in {home.root} yet: materialize `projector` "
                            f"(or run `luna demo`), or give the registry with --tracking-uri / ${TRACKING_URI_ENV}")
    mlflow = _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version(name, str(ref)) if str(ref).isdigit() else \
            client.get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        raise NotBuiltError(f"no projector {name} {'version' if str(ref).isdigit() else 'alias'} {ref} in "
                            f"{uri} ({str(exc).splitlines()[0][:160]})") from None
    own = _home_artifact(home, uri, client.get_run(version.run_id).info.artifact_uri)
    if own is not None:
        return load_checkpoint(own / "checkpoint", expect)
    target = Path(tempfile.mkdtemp(prefix="luna-projector-load-"))
    try:
        local = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="checkpoint", dst_path=str(target))
    except (MlflowException, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise CorruptStoreError(f"the checkpoint of {name} v{version.version} is missing ({exc})") from None
    try:
        return load_checkpoint(Path(local), expect)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _home_artifact(home: LunaHome, uri: str, artifact_uri: str) -> Path | None:
    """A run's artifact folder inside *this* home, for the embedded registry: MLflow records absolute
    artifact locations, so a moved or copied home would otherwise read the original home's files."""
    from urllib.parse import unquote, urlparse

    if uri != home.default_tracking_uri() or not artifact_uri.startswith("file:"):
        return None
    parts = Path(unquote(urlparse(artifact_uri).path)).parts
    for i in range(len(parts) - 1):
        if parts[i : i + 2] == ("mlflow", "artifacts"):
            local = home.mlflow_dir.joinpath("artifacts", *parts[i + 2 :])
            return local if local.is_dir() else None
    return None


def list_versions(home: LunaHome, name: str = REGISTERED_NAME, uri: str | None = None) -> list[dict]:
    uri = resolve_tracking_uri(home, uri)
    if _embedded_registry_missing(home, uri):
        return []
    _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for v in sorted(client.search_model_versions(name_filter(name)), key=lambda v: int(v.version)):
        run = client.get_run(v.run_id)
        out.append({"version": int(v.version), "aliases": ",".join(aliases.get(str(v.version), [])),
                    "arch": v.tags.get("arch", ""), "val_loss": v.tags.get("candidate_val_loss", ""),
                    "token_cos": f"{run.data.metrics.get('final_val_token_cosine', float('nan')):.4f}",
                    "pooled_cos": f"{run.data.metrics.get('final_val_pooled_cosine', float('nan')):.4f}",
                    "fingerprint": v.tags.get("data_fingerprint", ""), "promoted": v.tags.get("promoted", ""),
                    "subset": v.tags.get("subset", "")})
    return out


def champion_training(home: LunaHome, name: str = REGISTERED_NAME, uri: str | None = None) -> dict | None:
    """@champion's version, data fingerprint and number of training pairs; None when there is none."""
    uri = resolve_tracking_uri(home, uri)
    if _embedded_registry_missing(home, uri):
        return None
    _mlflow(uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    pairs = client.get_run(champion.run_id).data.params.get("train_pairs", "0")
    return {"version": int(champion.version), "fingerprint": champion.tags.get("data_fingerprint", ""),
            "train_pairs": int(pairs)}
