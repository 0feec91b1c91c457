"""Train → register → promote, as one call the `projector` asset (and a notebook) can make."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from luna_core.models.profiles import ModelProfile
from luna_core.projector.models import ProjectorConfig
from luna_core.projector.registry import REGISTERED_NAME, Registration, register, tracking_uri
from luna_core.projector.train import TrainResult, TrainSettings, fingerprint, load_pairs, train_projector, validation_scorer


@dataclass
class ProjectorOutcome:
    trained: bool
    reason: str
    result: TrainResult | None = None
    registration: Registration | None = None


def _already_trained(home_root: Path, name: str, fp: str, config: ProjectorConfig, code_version: str,
                     uri: str | None = None) -> int | None:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(uri or tracking_uri(home_root))
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    for version in versions:
        tags = version.tags
        if (tags.get("data_fingerprint") == fp and tags.get("code_version") == code_version
                and tags.get("config") == str(sorted(config.to_dict().items()))):
            return int(version.version)
    return None


def train_and_register(home_root: Path, catalog_path: Path, profile: ModelProfile, config: ProjectorConfig,
                       settings: TrainSettings, name: str = REGISTERED_NAME, where: str | None = None,
                       margin: float = 0.0, code_version: str = "1", tags: dict | None = None,
                       force: bool = False, uri: str | None = None, on_epoch=None) -> ProjectorOutcome:
    """Train unless a version with the same data, config and code is registered already; then
    register the candidate and move @champion only if it beats the champion on the same val pairs."""
    from luna_core.projector.registry import check_reachable

    check_reachable(uri or tracking_uri(home_root))  # before any training: fail fast, register nothing
    fp = fingerprint(load_pairs(catalog_path, "train", where), profile)
    if not force:
        existing = _already_trained(home_root, name, fp, config, code_version, uri)
        if existing is not None:
            return ProjectorOutcome(False, f"{name} v{existing} was trained on the same pairs, config and code")
    result = train_projector(home_root, catalog_path, profile, config, settings, where, on_epoch)
    score = validation_scorer(home_root, catalog_path, profile, settings.batch_size, where)
    registration = register(result, home_root, profile, score, name, margin,
                            tags={"code_version": code_version, "config": str(sorted(config.to_dict().items())),
                                  **(tags or {})},
                            where=where, settings={k: v for k, v in settings.__dict__.items()}, uri=uri)
    return ProjectorOutcome(True, "trained", result, registration)
