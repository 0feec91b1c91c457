"""Registering a trained projector and moving @champion only when it beats the champion on the same
validation pairs; checking afterwards that @champion really is the best."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from luna_core.errors import LunaConfigError
from luna_core.projector.checkpoints import model_card, save_checkpoint
from luna_core.projector.models import ProjectorConfig, checkpoint_values, parameter_count
from luna_core.projector.registry import Registry
from luna_core.projector.request import CHAMPION, REGISTERED_NAME, ProjectorRequest

# Bit noise between scoring at registration and re-scoring from the stored checkpoint.
RESCORE_TOLERANCE = 1e-4


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


def register(
    registry: Registry, result, profile, scorer, request: ProjectorRequest = ProjectorRequest()
) -> Registration:
    """Log the training run, register a version, and move @champion only if the candidate's val loss
    beats the champion's on the same pairs by `request.margin`. `scorer(model) -> val loss`; its
    `fingerprint` names the validation pairs and is recorded with the score."""
    # mlflow is heavy (about a second to import): only code that writes the registry pays for it.
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import save_model

    client, uri = registry.client, registry.uri
    name, config = request.name, result.config
    params = parameter_count(result.model)
    values = checkpoint_values(result.model)
    card = model_card(
        config,
        result.val_metrics,
        result.data_fingerprint,
        profile.name,
        result.train_pairs,
        (params, values),
        request.where,
    )
    staging = Path(tempfile.mkdtemp(prefix="luna-projector-"))
    try:
        checkpoint = save_checkpoint(result.model, config, staging / "checkpoint", card)
        # `config` is the checkpoint's own (widths from the stores), so the tag says what the
        # weights are.
        version_tags = {
            "data_fingerprint": result.data_fingerprint,
            "profile": profile.name,
            "vision_key": profile.vision_key,
            "text_key": profile.text_key,
            "arch": config.arch,
            "checkpoint_values": str(values),
            "subset": request.where or "",
            "code_version": request.code_version,
            "training_identity": request.training_identity(),
            "config": json.dumps(config.to_dict(), sort_keys=True),
            **request.tags,
        }
        # The pyfunc wrapper is saved here and logged as the run's `model` folder: nothing goes
        # through MLflow's process-wide tracking URI.
        save_model(
            str(staging / "model"),
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={"checkpoint": str(checkpoint)},
            signature=_signature(config),
            input_example=np.zeros((1, config.in_dim)),
            pip_requirements=["torch", "safetensors", "numpy"],
        )
        metrics = [
            (k, float(v), int(row["epoch"]))
            for row in result.history
            for k, v in row.items()
            if k != "epoch"
        ]
        metrics += [(f"final_val_{k}", float(v), 0) for k, v in result.val_metrics.items()]
        params = {
            **config.to_dict(),
            **request.settings.__dict__,
            "params": params,
            "checkpoint_values": values,
            "train_pairs": result.train_pairs,
            "val_pairs": result.val_pairs,
            "subset": request.where or "",
        }
        run_id, artifact_uri = registry.log_run(
            name,
            f"{config.arch}-{result.data_fingerprint[:8]}",
            params,
            metrics,
            version_tags,
            {"checkpoint": checkpoint, "model": staging / "model"},
        )
        try:
            client.get_registered_model(name)
        except MlflowException:
            client.create_registered_model(
                name, description="Luna projectors: CLIP-ViT image embedding → SDXL conditioning"
            )
        version = client.create_model_version(
            name, f"{artifact_uri}/model", run_id=run_id, tags=version_tags
        )
        number = int(version.version)
    except MlflowException as exc:
        raise LunaConfigError(f"MLflow at {uri} refused the run: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    candidate = float(scorer(result.model))
    champion_version, champion_score = None, None
    current = registry.champion(name)
    if current is not None and current.version != number:
        champion_version = current.version
        try:
            champion_model, _ = registry.load(name, champion_version, expect=_widths(config))
            champion_score = float(scorer(champion_model))
        except (
            LunaConfigError
        ) as exc:  # a champion that no longer fits the encoders cannot defend its title
            champion_score = None
            client.set_model_version_tag(
                name, str(champion_version), "luna_unusable", str(exc)[:250]
            )
    margin = request.margin
    if champion_score is None or candidate < champion_score - margin:
        client.set_registered_model_alias(name, CHAMPION, str(number))
        promoted = True
        decision = (
            "no usable champion: promoted"
            if champion_score is None
            else f"val loss {candidate:.5f} beats champion v{champion_version} "
            f"({champion_score:.5f}) by more than {margin}"
        )
    else:
        promoted = False
        decision = (
            f"val loss {candidate:.5f} does not beat champion v{champion_version} "
            f"({champion_score:.5f}) "
            f"by more than {margin}: registered, not promoted"
        )
    scored = {
        "candidate_val_loss": f"{candidate:.6f}",
        "val_fingerprint": getattr(scorer, "fingerprint", ""),
        "margin": str(margin),
        "champion_val_loss": "" if champion_score is None else f"{champion_score:.6f}",
        "promoted": str(promoted),
        "decision": decision,
    }
    for key, value in scored.items():
        client.set_model_version_tag(name, str(number), key, value)
    return Registration(
        name, number, run_id, candidate, champion_version, champion_score, promoted, decision
    )


def _signature(config: ProjectorConfig):
    """Inputs: `in_dim` unnamed double columns, so float32, float64 and int arrays all pass MLflow's
    schema check (it refuses a tensor of another float width); outputs: the flattened
    conditioning."""
    # mlflow takes about a second to import: only code that reads or writes the registry pays for it
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.double) for _ in range(config.in_dim)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, config.out_dim))]),
    )


@dataclass
class ChampionVerdict:
    passed: bool
    description: str
    metadata: dict


def verify_champion(registry: Registry, scorer, name: str = REGISTERED_NAME) -> ChampionVerdict:
    """Is @champion really the best? Its checkpoint is re-scored on the scorer's validation pairs
    and must reproduce its recorded val loss, which must be the lowest (within each version's
    margin) among the versions scored on the same pairs."""
    if not registry.exists:
        return ChampionVerdict(False, f"no registry at {registry.uri} yet", {})
    versions = registry.versions(name)
    champion = next((v for v in versions if v.is_champion), None)
    if champion is None:
        return ChampionVerdict(False, f"{name} has no @champion", {})
    fingerprint = getattr(scorer, "fingerprint", "")
    recorded = champion.val_loss
    meta = {
        "champion": f"v{champion.version}",
        "recorded val loss": recorded,
        "val pairs": fingerprint,
    }
    if champion.tags.get("val_fingerprint") != fingerprint:
        return ChampionVerdict(
            True,
            f"@champion v{champion.version} was scored on other validation pairs (the "
            "library changed); the next candidate is compared with it afresh",
            meta,
        )
    model, _ = registry.load(name, champion.version)
    rescored = float(scorer(model))
    meta["re-scored val loss"] = f"{rescored:.6f}"
    if not recorded or abs(rescored - float(recorded)) > RESCORE_TOLERANCE * max(
        1.0, abs(rescored)
    ):
        return ChampionVerdict(
            False,
            f"@champion v{champion.version}'s stored checkpoint scores {rescored:.6f}, "
            f"not its recorded {recorded or '(none)'}",
            meta,
        )
    better = []
    for version in versions:
        tags = version.tags
        if version.version == champion.version or tags.get("val_fingerprint") != fingerprint:
            continue
        loss, margin = (
            float(tags.get("candidate_val_loss", "inf")),
            float(tags.get("margin", "0") or 0),
        )
        if loss < rescored - margin - RESCORE_TOLERANCE:
            better.append(f"v{version.version} ({loss:.6f})")
    meta["versions scored on the same pairs that beat it"] = ", ".join(better) or "none"
    if better:
        return ChampionVerdict(
            False,
            f"@champion v{champion.version} ({rescored:.6f}) is beaten by "
            f"{', '.join(better)} on the same validation pairs",
            meta,
        )
    return ChampionVerdict(
        True,
        f"@champion v{champion.version} has the lowest val loss on these pairs "
        f"({rescored:.6f}, re-scored from its checkpoint)",
        meta,
    )


def _widths(config: ProjectorConfig) -> dict:
    return {
        "in_dim": config.in_dim,
        "seq_len": config.seq_len,
        "width": config.width,
        "pooled_width": config.pooled_width,
    }
