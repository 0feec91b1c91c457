"""Train → register → promote, as one call the `projector` asset (and a notebook) can make."""

from __future__ import annotations

from dataclasses import dataclass

from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile
from luna_core.projector.pairs import fingerprint, load_pairs
from luna_core.projector.promotion import Registration, register
from luna_core.projector.registry import Registry
from luna_core.projector.request import ProjectorRequest
from luna_core.projector.train import (
    TrainResult,
    check_settings,
    train_projector,
    validation_scorer,
)


@dataclass
class ProjectorOutcome:
    trained: bool
    reason: str
    result: TrainResult | None = None
    registration: Registration | None = None


def already_trained(
    registry: Registry, request: ProjectorRequest, data_fingerprint: str
) -> int | None:
    """The version trained on these pairs with this request's identity (config, settings, subset,
    code), if any."""
    identity = request.training_identity()
    for version in registry.versions(request.name):
        if (
            version.fingerprint == data_fingerprint
            and version.tags.get("training_identity") == identity
        ):
            return version.version
    return None


def train_and_register(
    home: LunaHome,
    profile: ModelProfile,
    request: ProjectorRequest = ProjectorRequest(),
    on_epoch=None,
) -> ProjectorOutcome:
    """Train unless a version with the same data and training identity is registered already; then
    register the candidate and move @champion only if it beats the champion on the same val
    pairs."""
    check_settings(request.config, request.settings)
    registry = Registry(home, request.tracking_uri)
    # a remote registry must answer before any training: register nothing
    registry.client  # noqa: B018
    data_fingerprint = fingerprint(load_pairs(home, "train", request.where), profile)
    if not request.force:
        existing = already_trained(registry, request, data_fingerprint)
        if existing is not None:
            return ProjectorOutcome(
                False,
                f"{request.name} v{existing} was trained on the same pairs, "
                "config, settings and code",
            )
    result = train_projector(
        home, profile, request.config, request.settings, request.where, on_epoch
    )
    scorer = validation_scorer(home, profile, request.settings.batch_size, request.where)
    registration = register(registry, result, profile, scorer, request)
    return ProjectorOutcome(True, "trained", result, registration)
