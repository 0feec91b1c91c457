"""What to train and where to register it: one settings object for the whole projector pipeline."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from luna_core.projector.config import ProjectorConfig, TrainSettings
from luna_core.projector.names import CHAMPION, REGISTERED_NAME  # noqa: F401 - re-exported

# Settings that change the trained weights; the rest (progress bars, refusal thresholds, device) do
# not.
RESULT_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "patience",
    "seed",
    "ridge_l2",
    "kernel_scales",
    "basis_sample",
)


@dataclass(frozen=True)
class ProjectorRequest:
    # architecture and sizes (widths come from the stores)
    config: ProjectorConfig = ProjectorConfig()
    settings: TrainSettings = TrainSettings()
    name: str = REGISTERED_NAME  # a subset specialist gets a name of its own
    where: str | None = None  # SQL condition over the `library` view
    margin: float = 0.0  # val-loss improvement needed to move @champion
    force: bool = False  # train even when this data, config and code already have a version
    tracking_uri: str | None = None  # None: $LUNA_MLFLOW_URI, else the home's embedded sqlite store
    code_version: str = "1"
    tags: dict = field(default_factory=dict)

    def training_identity(self) -> str:
        """Everything that changes the trained model except the data: architecture, result-changing
        settings, subset and code version. Same identity and same data fingerprint: same model."""
        settings = {name: getattr(self.settings, name) for name in RESULT_SETTINGS}
        text = json.dumps(
            {
                "config": asdict(self.config),
                "settings": settings,
                "where": self.where or "",
                "code_version": self.code_version,
            },
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]
