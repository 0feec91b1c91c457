"""Train a projector on the catalog's train split, stop early on the val split.

Pairs are (image embedding, its prompt's conditioning) from the `library` view. The split's image
embeddings are held in memory as float16 (1 GB for 500k x 1024); conditionings are streamed from
Zarr a batch at a time (at SDXL widths one row is 315 KB, 157 GB for 500k images), so memory
stays bounded by the batch. Fixed seeds: a run repeats.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from luna_core.errors import LunaConfigError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile, choose_device
from luna_core.projector.config import (  # noqa: F401 - TrainSettings re-exported
    ARCHITECTURES,
    ProjectorConfig,
    TrainSettings,
)
from luna_core.projector.models import KernelRidge, LowRankRidge, build_projector, target_basis
from luna_core.projector.pairs import Pairs, fingerprint, load_pairs
from luna_core.vault.segments import open_text_store, open_vision_store

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: torch.nn.Module
    config: ProjectorConfig
    history: list[dict] = field(default_factory=list)
    val_metrics: dict = field(default_factory=dict)
    train_pairs: int = 0
    val_pairs: int = 0
    seconds: float = 0.0
    pairs_per_s: float = 0.0
    data_fingerprint: str = ""


class _Stores:
    def __init__(self, home: LunaHome, profile: ModelProfile):
        self.vision = open_vision_store(home, profile)
        self.text = open_text_store(home, profile)

    def dims(self) -> dict:
        seq, width = self.text.fields["prompt_embeds"]
        return {
            "in_dim": self.vision.fields["embeds"][0],
            "seq_len": seq,
            "width": width,
            "pooled_width": self.text.fields["pooled_prompt_embeds"][0],
        }

    def embeddings(self, rows: np.ndarray) -> np.ndarray:
        order = np.argsort(rows)
        out = np.empty((len(rows), self.vision.fields["embeds"][0]), np.float16)
        out[order] = self.vision.read("embeds", rows[order])
        return out

    def targets(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.from_numpy(self.text.read_rows("prompt_embeds", rows)).float()
        pooled = torch.from_numpy(self.text.read_rows("pooled_prompt_embeds", rows)).float()
        return tokens, pooled


def losses(
    tokens: torch.Tensor,
    pooled: torch.Tensor,
    target_tokens: torch.Tensor,
    target_pooled: torch.Tensor,
):
    """Per-token error plus (1 - cosine) of tokens and of the pooled vector; and the metrics."""
    mse = torch.mean((tokens - target_tokens) ** 2) + torch.mean((pooled - target_pooled) ** 2)
    token_cos = torch.nn.functional.cosine_similarity(tokens, target_tokens, dim=-1).mean()
    pooled_cos = torch.nn.functional.cosine_similarity(pooled, target_pooled, dim=-1).mean()
    loss = mse + (1 - token_cos) + (1 - pooled_cos)
    return loss, {
        "mse": float(mse.detach()),
        "token_cosine": float(token_cos.detach()),
        "pooled_cosine": float(pooled_cos.detach()),
    }


def evaluate(
    model: torch.nn.Module,
    stores: _Stores,
    embeddings: np.ndarray,
    pairs: Pairs,
    batch_size: int,
    device,
) -> dict:
    """Mean loss and metrics over pairs, weighted by batch size."""
    model.eval()
    totals: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(pairs.prompt_rows), batch_size):
            x = torch.from_numpy(embeddings[start : start + batch_size]).float().to(device)
            target_tokens, target_pooled = stores.targets(
                pairs.prompt_rows[start : start + batch_size]
            )
            tokens, pooled = model(x)
            loss, metrics = losses(tokens.cpu(), pooled.cpu(), target_tokens, target_pooled)
            for name, value in {"loss": float(loss), **metrics}.items():
                totals[name] = totals.get(name, 0.0) + value * len(x)
    return {name: value / max(1, len(pairs.prompt_rows)) for name, value in totals.items()}


def check_settings(config: ProjectorConfig, settings: TrainSettings) -> None:
    """Refuse settings that cannot train a model, before any data is read."""

    if config.arch not in ARCHITECTURES:
        raise LunaConfigError(
            f"projector architecture {config.arch!r} is not one of {', '.join(ARCHITECTURES)}"
        )
    if settings.epochs < 1:
        raise LunaConfigError(f"epochs must be at least 1 (got {settings.epochs})")
    if settings.batch_size < 1:
        raise LunaConfigError(f"batch_size must be at least 1 (got {settings.batch_size})")
    if not (np.isfinite(settings.lr) and settings.lr > 0):
        raise LunaConfigError(f"lr must be a positive number (got {settings.lr})")
    if settings.patience < 1:
        raise LunaConfigError(f"patience must be at least 1 (got {settings.patience})")


def train_projector(
    home: LunaHome,
    profile: ModelProfile,
    config: ProjectorConfig = ProjectorConfig(),
    settings: TrainSettings = TrainSettings(),
    where: str | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    started = time.perf_counter()
    check_settings(config, settings)
    train, val = load_pairs(home, "train", where), load_pairs(home, "val", where)
    subset = f" matching {where!r}" if where else ""
    if (
        len(train.prompt_rows) < settings.min_train_pairs
        or len(val.prompt_rows) < settings.min_val_pairs
    ):
        raise LunaConfigError(
            f"too little data to train a meaningful projector{subset}: {len(train.prompt_rows)} "
            "train and "
            f"{len(val.prompt_rows)} val pairs (need {settings.min_train_pairs} and "
            f"{settings.min_val_pairs})"
        )
    # every chunk of every prompt is a target: the pairs below are (image, chunk row)
    images, data = (len(train.prompt_rows), len(val.prompt_rows)), fingerprint(train, profile)
    train, val = train.every_chunk(), val.every_chunk()
    stores = _Stores(home, profile)
    config = replace(config, **stores.dims())
    basis_pairs = min(settings.basis_sample, len(train.prompt_rows))
    if config.arch == "kernel":
        config = replace(config, anchors=min(config.anchors, basis_pairs))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = choose_device(settings.device)
    model = build_projector(config).to(device)
    train_x, val_x = stores.embeddings(train.vision_rows), stores.embeddings(val.vision_rows)
    result = TrainResult(
        model,
        config,
        train_pairs=images[0],
        val_pairs=images[1],
        data_fingerprint=data,
    )
    seen = 0
    if isinstance(model, LowRankRidge):
        sample = np.sort(rng.choice(len(train.prompt_rows), basis_pairs, replace=False))
        tokens, pooled = stores.targets(train.prompt_rows[sample])
        targets = torch.cat([tokens.flatten(1), pooled], dim=1)
        x = torch.from_numpy(train_x[sample]).float()
        basis = target_basis(targets, config.rank)  # once: every (scale, l2) shares it
        best, best_state, step = float("inf"), None, 0
        for scale in settings.kernel_scales if isinstance(model, KernelRidge) else (None,):
            if scale is not None:
                model.set_anchors(x[: config.anchors], scale)
            for l2 in settings.ridge_l2:
                model.fit(x, targets, l2, basis)
                metrics = evaluate(model, stores, val_x, val, settings.batch_size, device)
                step += 1
                result.history.append(
                    {
                        "epoch": step,
                        "ridge_l2": l2,
                        "kernel_scale": scale or 0.0,
                        **{f"val_{k}": v for k, v in metrics.items()},
                    }
                )
                # Chosen by the squared error the ridge minimizes: the cosine terms of the loss
                # reward near-interpolation (tiny l2), which a small val split cannot tell from
                # overfitting.
                if np.isfinite(metrics["mse"]) and metrics["mse"] < best:
                    best, best_state = metrics["mse"], copy.deepcopy(model.state_dict())
        if best_state is None:
            raise LunaConfigError(
                f"the {config.arch} projector gave no finite validation loss at any ridge strength"
            )
        model.load_state_dict(best_state)
        seen = len(sample)
    else:
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
        )
        best, best_state, stale = float("inf"), None, 0
        bar = tqdm(
            total=settings.epochs,
            desc=f"train {config.arch}",
            unit="epoch",
            disable=not settings.progress,
        )
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = rng.permutation(len(train.prompt_rows))
            running = 0.0
            for start in range(0, len(order), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                x = torch.from_numpy(train_x[batch]).float().to(device)
                target_tokens, target_pooled = stores.targets(train.prompt_rows[batch])
                tokens, pooled = model(x)
                loss, _ = losses(tokens, pooled, target_tokens.to(device), target_pooled.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                running += float(loss.detach()) * len(batch)
                seen += len(batch)
            metrics = evaluate(model, stores, val_x, val, settings.batch_size, device)
            row = {
                "epoch": epoch,
                "train_loss": running / len(order),
                **{f"val_{k}": v for k, v in metrics.items()},
            }
            result.history.append(row)
            bar.update(1)
            bar.set_postfix(
                train_loss=f"{row['train_loss']:.4f}",
                val_loss=f"{metrics['loss']:.4f}",
                pairs_per_s=f"{seen / (time.perf_counter() - started):.0f}",
            )
            if on_epoch:
                on_epoch(row)
            log.info("epoch %d: %s", epoch, row)
            if np.isfinite(metrics["loss"]) and metrics["loss"] < best - 1e-6:
                best, best_state, stale = metrics["loss"], copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= settings.patience:
                    break
        bar.close()
        if best_state is None:
            raise LunaConfigError(
                f"training {config.arch} gave no finite validation loss in {len(result.history)} "
                "epoch(s) "
                f"(lr {settings.lr}): the model diverged; lower lr and try again. Nothing was "
                "registered."
            )
        model.load_state_dict(best_state)
    result.val_metrics = evaluate(model, stores, val_x, val, settings.batch_size, device)
    if not np.isfinite(result.val_metrics["loss"]):
        raise LunaConfigError(
            f"the trained {config.arch} gives a non-finite validation loss: nothing was registered"
        )
    result.seconds = time.perf_counter() - started
    result.pairs_per_s = seen / result.seconds if result.seconds else 0.0
    return result


@dataclass
class ValidationScorer:
    """model → loss on one fixed set of validation pairs: candidate and champion are judged alike.
    `fingerprint` names the pairs, so scores are only ever compared on the same ones."""

    stores: _Stores
    pairs: Pairs
    embeddings: np.ndarray
    batch_size: int
    fingerprint: str

    def __call__(self, model: torch.nn.Module) -> float:
        device = next(iter([*model.parameters(), *model.buffers()])).device
        return evaluate(model, self.stores, self.embeddings, self.pairs, self.batch_size, device)[
            "loss"
        ]


def validation_scorer(
    home: LunaHome,
    profile: ModelProfile,
    batch_size: int = 32,
    where: str | None = None,
    split: str = "val",
) -> ValidationScorer:
    pairs = load_pairs(home, split, where)
    if len(pairs.prompt_rows) == 0:
        raise NotBuiltError(f"no {split} pairs to compare projectors on")
    stores, data = _Stores(home, profile), fingerprint(pairs, profile)
    pairs = pairs.every_chunk()  # scored on every chunk, as it was trained
    return ValidationScorer(stores, pairs, stores.embeddings(pairs.vision_rows), batch_size, data)
