"""Projector architectures and training (the MLflow registry and the asset come with issue 5)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from luna_core.errors import LunaConfigError
from luna_core.projector.models import (
    ARCHITECTURES,
    LowRankRidge,
    ProjectorConfig,
    build_projector,
    parameter_count,
)
from luna_core.projector.train import TrainSettings, train_projector


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sdxl_width_projectors_stay_under_ten_million_parameters(arch):
    model = build_projector(ProjectorConfig(arch=arch))
    tokens, pooled = model(torch.randn(2, 1024))
    assert tokens.shape == (2, 77, 2048) and pooled.shape == (2, 1280)
    assert parameter_count(model) <= 10_000_000


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_checkpoint_size_counts_every_value_it_holds(arch, tmp_path):
    """What MLflow and `luna projector list` record as a checkpoint's size is what the file holds:
    parameters and kept buffers (the closed-form models' weights and output basis are buffers)."""
    from safetensors import safe_open

    from luna_core.projector.checkpoints import WEIGHTS, save_checkpoint
    from luna_core.projector.models import checkpoint_values

    config = ProjectorConfig(arch=arch)
    model = build_projector(config)
    folder = save_checkpoint(model, config, tmp_path / arch)
    with safe_open(str(folder / WEIGHTS), framework="pt") as file:
        stored = sum(int(np.prod(file.get_slice(key).get_shape())) for key in file.keys())
    assert checkpoint_values(model) == stored <= 10_000_000
    assert parameter_count(model) <= stored


def test_closed_form_ridge_recovers_a_linear_map():
    config = ProjectorConfig(arch="linear", in_dim=8, seq_len=3, width=4, pooled_width=2, rank=4)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 8)).astype(np.float32))
    true = torch.from_numpy(rng.normal(size=(8, 4)).astype(np.float32)) @ torch.from_numpy(
        rng.normal(size=(4, config.out_dim)).astype(np.float32)
    )
    model = LowRankRidge(config)
    model.fit(x, x @ true + 0.5, l2=1e-6)
    tokens, pooled = model(x[:5])
    np.testing.assert_allclose(
        torch.cat([tokens.flatten(1), pooled], 1).numpy(), (x[:5] @ true + 0.5).numpy(), atol=1e-3
    )


def test_kernel_ridge_fits_what_a_linear_map_cannot():
    """On held-out points of a non-linear map (a bump around two centres), Gaussian-kernel features
    beat the plain ridge: the kernel projector interpolates between library images, as k-NN does."""
    from luna_core.projector.models import KernelRidge, target_basis

    config = ProjectorConfig(
        arch="kernel", in_dim=4, seq_len=2, width=3, pooled_width=2, rank=4, anchors=300
    )
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(400, 4)).astype(np.float32))
    centres = torch.from_numpy(rng.normal(size=(2, 4)).astype(np.float32))
    bumps = torch.exp(-(torch.cdist(x, centres) ** 2))  # [N, 2]
    y = bumps @ torch.from_numpy(rng.normal(size=(2, config.out_dim)).astype(np.float32))
    train, test = slice(0, 300), slice(300, 400)
    errors = {}
    for model in (KernelRidge(config), LowRankRidge(replace(config, arch="linear"))):
        if isinstance(model, KernelRidge):
            model.set_anchors(x[train], 1.0)
        model.fit(x[train], y[train], 1e-4, target_basis(y[train], config.rank))
        tokens, pooled = model(x[test])
        errors[type(model).__name__] = float(
            ((torch.cat([tokens.flatten(1), pooled], 1) - y[test]) ** 2).mean()
        )
    assert errors["KernelRidge"] < 0.7 * errors["LowRankRidge"], errors


SMALL = TrainSettings(epochs=4, min_train_pairs=8, min_val_pairs=2, batch_size=8)


def test_training_improves_on_val_and_repeats_exactly(library_home):
    home, profile = library_home
    config = ProjectorConfig(arch="resampler", hidden=32, heads=2, layers=1)
    first = train_projector(home, profile, config, SMALL)
    again = train_projector(home, profile, config, SMALL)
    assert (
        first.config.width == 96 and first.config.pooled_width == 48 and first.config.in_dim == 48
    )
    losses = [row["val_loss"] for row in first.history]
    assert min(losses) < losses[0], "training lowers the val loss"
    assert first.val_metrics["loss"] == pytest.approx(min(losses), rel=1e-5), (
        "the best epoch is kept"
    )
    assert (
        first.val_metrics == again.val_metrics and first.data_fingerprint == again.data_fingerprint
    )


def test_tiny_or_empty_splits_are_refused(library_home):
    home, profile = library_home
    with pytest.raises(LunaConfigError, match="too little data"):
        train_projector(
            home, profile, ProjectorConfig(arch="mlp"), TrainSettings(min_train_pairs=1000)
        )
    with pytest.raises(LunaConfigError, match="matching"):
        train_projector(
            home,
            profile,
            ProjectorConfig(arch="mlp"),
            SMALL,
            where="prompt ILIKE '%no such subject%'",
        )


def test_subset_specialist_trains_on_its_filter(library_home):
    home, profile = library_home
    everything = train_projector(home, profile, ProjectorConfig(arch="linear", rank=4), SMALL)
    subset = train_projector(
        home,
        profile,
        ProjectorConfig(arch="linear", rank=4),
        TrainSettings(min_train_pairs=2, min_val_pairs=1),
        where="generator <> 'ComfyUI'",
    )
    assert subset.train_pairs < everything.train_pairs
    assert subset.data_fingerprint != everything.data_fingerprint
