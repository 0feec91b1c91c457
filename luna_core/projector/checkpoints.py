"""A projector checkpoint on disk: safetensors weights, a JSON config and a model card, never
pickle; and the behaviour of the MLflow pyfunc model that wraps one (see pyfunc_model.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from luna_core.errors import CorruptStoreError, LunaConfigError
from luna_core.projector.config import ProjectorConfig

WEIGHTS, CONFIG, CARD = "weights.safetensors", "config.json", "MODEL_CARD.md"


def save_checkpoint(model, config: ProjectorConfig, folder: Path, card: str = "") -> Path:
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
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
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    from safetensors.torch import load_file

    # the projectors' classes are torch modules: the registry's readers need not import them
    from luna_core.projector.models import build_projector

    try:
        config = ProjectorConfig(**json.loads((folder / CONFIG).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise CorruptStoreError(
            f"projector config in {folder} is missing or corrupted ({exc})"
        ) from None
    for key, value in (expect or {}).items():
        if getattr(config, key) != value:
            raise LunaConfigError(
                f"the projector in {folder} has {key} = {getattr(config, key)}, but the configured "
                f"model profile needs {value}: it was trained for other encoders"
            )
    model = build_projector(config)
    try:
        model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise CorruptStoreError(
            f"projector weights in {folder} are missing or corrupted ({str(exc)[:200]})"
        ) from None
    return model.eval(), config


class ProjectorPyfunc:
    """The pyfunc model's behaviour (see pyfunc_model.py): safetensors in, flattened
    conditionings out."""

    def load_context(self, context):
        self.model, self.config = load_checkpoint(Path(context.artifacts["checkpoint"]))

    def predict(self, context, model_input, params=None):
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        # Any float (or int) array or DataFrame: cast to float32 in a fresh, writable array.
        x = torch.from_numpy(np.array(model_input, dtype=np.float32, copy=True))
        with torch.no_grad():
            tokens, pooled = self.model(x)
        return torch.cat([tokens.flatten(1), pooled], dim=1).numpy()


def model_card(
    config: ProjectorConfig,
    metrics: dict,
    fingerprint: str,
    profile_name: str,
    train_pairs: int,
    params: tuple[int, int],
    where: str | None,
) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items())
    return (
        f"# Luna projector ({config.arch})\n\nMaps a CLIP-ViT image embedding "
        f"({config.in_dim}-d) to an SDXL text "
        f"conditioning ([{config.seq_len}, {config.width}] + pooled [{config.pooled_width}]).\n\n"
        f"- parameters: {params[0]:,} trained; {params[1]:,} values in the checkpoint (buffers "
        "included)\n- model profile: {profile_name}\n- training pairs: "
        f"{train_pairs:,}"
        f" (fingerprint {fingerprint})\n- subset: {where or 'whole library'}\n\n"
        f"| validation metric | value |\n|---|---|\n{rows}\n\n"
        "With the `tiny` profile these figures check the pipeline, not quality.\n"
    )
