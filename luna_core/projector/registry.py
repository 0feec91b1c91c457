"""Projector checkpoints in MLflow: log a run, register a version, promote it only when it beats the
champion on the same validation pairs, and load any version back by alias or number.

Checkpoints are safetensors plus a JSON config, never pickle; the logged `pyfunc` model wraps
them, so `mlflow.pyfunc.load_model("models:/luna-projector@champion")` maps image embeddings
[N, in_dim] to flattened conditionings [N, 77*D + P].
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna_core.errors import LunaConfigError
from luna_core.projector.models import ProjectorConfig, build_projector, parameter_count

REGISTERED_NAME = "luna-projector"
CHAMPION = "champion"
WEIGHTS, CONFIG, CARD = "weights.safetensors", "config.json", "MODEL_CARD.md"


def tracking_uri(home_root: Path) -> str:
    """The embedded default: MLflow on sqlite under the Luna home (absolute, as MLflow 3 wants)."""
    (Path(home_root) / "mlflow").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(Path(home_root) / 'mlflow' / 'mlflow.db').absolute()}"


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

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow


def _experiment(mlflow, home_root: Path, name: str) -> str:
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifacts = (Path(home_root) / "mlflow" / "artifacts").absolute()
    return mlflow.create_experiment(name, artifact_location=artifacts.as_uri())


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model, config: ProjectorConfig, folder: Path, card: str = "") -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config.to_dict(), indent=2))
    if card:
        (folder / CARD).write_text(card)
    return folder


def load_checkpoint(folder: Path, expect: dict | None = None):
    """The model in `folder` (weights + config); widths that do not fit `expect` are refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        config = ProjectorConfig(**json.loads((folder / CONFIG).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise LunaConfigError(f"projector config in {folder} is missing or corrupted ({exc})") from None
    for key, value in (expect or {}).items():
        if getattr(config, key) != value:
            raise LunaConfigError(f"the projector in {folder} has {key} = {getattr(config, key)}, but the configured "
                                  f"model profile needs {value}: it was trained for other encoders")
    model = build_projector(config)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise LunaConfigError(f"projector weights in {folder} are missing or corrupted ({str(exc)[:200]})") from None
    return model.eval(), config


class ProjectorPyfunc:
    """The pyfunc model's behaviour (see pyfunc_model.py): safetensors in, flattened conditionings out."""

    def load_context(self, context):
        self.model, self.config = load_checkpoint(Path(context.artifacts["checkpoint"]))

    def predict(self, context, model_input, params=None):
        import torch

        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            tokens, pooled = self.model(x)
        return torch.cat([tokens.flatten(1), pooled], dim=1).numpy()


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


def model_card(config: ProjectorConfig, metrics: dict, fingerprint: str, profile_name: str, train_pairs: int,
               params: int, where: str | None) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    return (f"# Luna projector ({config.arch})\n\nMaps a CLIP-ViT image embedding ({config.in_dim}-d) to an SDXL text "
            f"conditioning ([{config.seq_len}, {config.width}] + pooled [{config.pooled_width}]).\n\n"
            f"- parameters: {params:,}\n- model profile: {profile_name}\n- training pairs: {train_pairs:,}"
            f" (fingerprint {fingerprint})\n- subset: {where or 'whole library'}\n\n"
            f"| validation metric | value |\n|---|---|\n{rows}\n\n"
            "With the `tiny` profile these figures check the pipeline, not quality.\n")


def register(result, home_root: Path, profile, score_fn, name: str = REGISTERED_NAME, margin: float = 0.0,
             tags: dict | None = None, where: str | None = None, settings: dict | None = None,
             uri: str | None = None) -> Registration:
    """Log the training run, register a version, and move @champion only if the candidate's val loss
    beats the champion's on the same pairs by `margin`. `score_fn(model) -> val loss`."""
    mlflow = _mlflow(uri or tracking_uri(home_root))
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    client = MlflowClient()
    config = result.config
    params = parameter_count(result.model)
    card = model_card(config, result.val_metrics, result.data_fingerprint, profile.name, result.train_pairs, params, where)
    staging = Path(tempfile.mkdtemp(prefix="luna-projector-"))
    try:
        checkpoint = save_checkpoint(result.model, config, staging / "checkpoint", card)
        experiment_id = _experiment(mlflow, home_root, name)
        version_tags = {"data_fingerprint": result.data_fingerprint, "profile": profile.name,
                        "vision_key": profile.vision_key, "text_key": profile.text_key, "arch": config.arch,
                        "subset": where or "", **(tags or {})}
        with mlflow.start_run(experiment_id=experiment_id, run_name=f"{config.arch}-{result.data_fingerprint[:8]}") as run:
            mlflow.log_params({**config.to_dict(), **(settings or {}), "params": params, "train_pairs": result.train_pairs,
                               "val_pairs": result.val_pairs, "subset": where or ""})
            for row in result.history:
                mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
            mlflow.log_metrics({f"final_val_{k}": float(v) for k, v in result.val_metrics.items()})
            mlflow.log_artifacts(str(checkpoint), artifact_path="checkpoint")
            mlflow.set_tags(version_tags)
            signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config.in_dim))]),
                                       outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config.out_dim))]))
            info = mlflow.pyfunc.log_model(name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
                                           artifacts={"checkpoint": str(checkpoint)}, signature=signature,
                                           input_example=np.zeros((1, config.in_dim), np.float32),
                                           pip_requirements=["torch", "safetensors", "numpy"])
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(name, description="Luna projectors: CLIP-ViT image embedding → SDXL conditioning")
        version = mlflow.register_model(info.model_uri, name, tags=version_tags)
        number = int(version.version)
    except MlflowException as exc:
        raise LunaConfigError(f"MLflow at {uri or tracking_uri(home_root)} refused the run: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    candidate = float(score_fn(result.model))
    champion_version, champion_score = None, None
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
        champion_version = int(current.version)
    except MlflowException:
        current = None
    if current is not None:
        try:
            champion_model, _ = load_version(home_root, name, champion_version, expect=_widths(config), uri=uri)
            champion_score = float(score_fn(champion_model))
        except LunaConfigError as exc:  # a champion that no longer fits the encoders cannot defend its title
            champion_score = None
            client.set_model_version_tag(name, str(champion_version), "luna_unusable", str(exc)[:250])
    if champion_score is None or candidate < champion_score - margin:
        client.set_registered_model_alias(name, CHAMPION, str(number))
        promoted = True
        decision = ("no usable champion: promoted" if champion_score is None else
                    f"val loss {candidate:.5f} beats champion v{champion_version} ({champion_score:.5f}) by more than {margin}")
    else:
        promoted = False
        decision = (f"val loss {candidate:.5f} does not beat champion v{champion_version} ({champion_score:.5f}) "
                    f"by more than {margin}: registered, not promoted")
    for key, value in {"candidate_val_loss": f"{candidate:.6f}", "champion_val_loss": "" if champion_score is None
                       else f"{champion_score:.6f}", "promoted": str(promoted), "decision": decision}.items():
        client.set_model_version_tag(name, str(number), key, value)
    return Registration(name, number, run.info.run_id, candidate, champion_version, champion_score, promoted, decision)


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


def load_version(home_root: Path, name: str, ref: int | str, expect: dict | None = None, uri: str | None = None):
    """A registered projector by version number or alias, loaded from its safetensors checkpoint."""
    mlflow = _mlflow(uri or tracking_uri(home_root))
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version(name, str(ref)) if str(ref).isdigit() else \
            client.get_model_version_by_alias(name, str(ref))
    except MlflowException as exc:
        raise LunaConfigError(f"no projector {name} {'version' if str(ref).isdigit() else 'alias'} {ref} in "
                              f"{uri or tracking_uri(home_root)} ({str(exc).splitlines()[0][:160]})") from None
    target = Path(tempfile.mkdtemp(prefix="luna-projector-load-"))
    try:
        local = mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="checkpoint", dst_path=str(target))
    except (MlflowException, OSError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise LunaConfigError(f"the checkpoint of {name} v{version.version} is missing ({exc})") from None
    try:
        return load_checkpoint(Path(local), expect)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def list_versions(home_root: Path, name: str = REGISTERED_NAME, uri: str | None = None) -> list[dict]:
    _mlflow(uri or tracking_uri(home_root))
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
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        run = client.get_run(v.run_id)
        out.append({"version": int(v.version), "aliases": ",".join(aliases.get(str(v.version), [])),
                    "arch": v.tags.get("arch", ""), "val_loss": v.tags.get("candidate_val_loss", ""),
                    "token_cos": f"{run.data.metrics.get('final_val_token_cosine', float('nan')):.4f}",
                    "pooled_cos": f"{run.data.metrics.get('final_val_pooled_cosine', float('nan')):.4f}",
                    "fingerprint": v.tags.get("data_fingerprint", ""), "promoted": v.tags.get("promoted", ""),
                    "subset": v.tags.get("subset", "")})
    return out
