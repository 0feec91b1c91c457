"""Projector architectures: a CLIP-ViT image embedding in, an SDXL conditioning out
(`prompt_embeds [seq_len, width]` + `pooled [pooled_width]`). Each is one small class.

- `kernel` (default): closed-form ridge regression on Gaussian-kernel features (similarity to anchor
  training embeddings) onto a low-rank basis of the targets (fitted, not trained).
- `linear`: the same on the embedding itself.
- `mlp`: a residual MLP with a low-rank output layer.
- `resampler`: `seq_len` learned queries attend, through a few transformer layers, to tokens made
  from the image embedding; a pooled head reads the mean of the queries.
"""

from __future__ import annotations

import torch
from torch import nn

from luna_core.projector.config import ARCHITECTURES, ProjectorConfig  # noqa: F401 - re-exported


def target_basis(y: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, basis [rank, out_dim]): the targets' mean and top principal directions."""
    mean = y.mean(0)
    _, _, vh = torch.linalg.svd(y - mean, full_matrices=False)
    return mean, vh[: min(rank, *y.shape)]


class LowRankRidge(nn.Module):
    """y = mean + (features(x) @ weight + bias) @ basis; `fit` solves the ridge problem in closed
    form. Here the features are the embedding itself."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.out_dim))
        self.register_buffer("basis", torch.zeros(config.rank, config.out_dim))
        self.register_buffer("weight", torch.zeros(self.feature_dim, config.rank))
        self.register_buffer("bias", torch.zeros(config.rank))

    @property
    def feature_dim(self) -> int:
        return self.config.in_dim

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.no_grad()
    def fit(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        l2: float = 1e-2,
        basis: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """x [N, in_dim], y [N, out_dim] float32; `basis` = target_basis(y, rank) when already
        computed."""
        mean, directions = basis if basis is not None else target_basis(y, self.config.rank)
        rank = len(directions)
        # Solved in float64: a weakly regularized Gram matrix of kernel features is ill-conditioned.
        coeffs = ((y - mean) @ directions.T).double()  # [N, rank]
        features = self.features(x).double()
        f_mean = features.mean(0)
        fc = features - f_mean
        covariance = fc.T @ fc
        # l2 relative to the features' mean variance: the same strength means the same thing at any
        # scale.
        gram = covariance + l2 * (torch.trace(covariance) / fc.shape[1] + 1e-12) * torch.eye(
            fc.shape[1], dtype=fc.dtype
        )
        weight = torch.linalg.solve(gram, fc.T @ coeffs).float()
        f_mean = f_mean.float()
        self.mean.copy_(mean)
        self.basis.zero_()
        self.basis[:rank].copy_(directions)
        self.weight.zero_()
        self.weight[:, :rank].copy_(weight)
        self.bias.zero_()
        self.bias[:rank].copy_(-(f_mean @ weight))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.mean + (self.features(x) @ self.weight + self.bias) @ self.basis
        return _split(flat, self.config)


class KernelRidge(LowRankRidge):
    """Ridge regression on Gaussian-kernel features: the embedding's similarity to `anchors`
    training embeddings, exp(-|x - a|² / 2σ²). A smooth interpolation between library images
    (what the vault's k-NN does by lookup), fitted in closed form; σ is a multiple of the
    anchors' median distance."""

    def __init__(self, config: ProjectorConfig):
        super().__init__(config)
        self.register_buffer("anchors", torch.zeros(config.anchors, config.in_dim))
        self.register_buffer("sigma", torch.ones(()))

    @property
    def feature_dim(self) -> int:
        return self.config.anchors

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(torch.cdist(x, self.anchors) ** 2) / (2 * self.sigma**2))

    @torch.no_grad()
    def set_anchors(self, anchors: torch.Tensor, scale: float) -> None:
        self.anchors.copy_(anchors)
        distances = torch.cdist(anchors, anchors)
        positive = distances[distances > 0]
        self.sigma.fill_(float(positive.median()) * scale if positive.numel() else 1.0)


class ResidualMLP(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.inp = nn.Linear(config.in_dim, config.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(config.hidden),
                nn.Linear(config.hidden, 4 * config.hidden),
                nn.GELU(),
                nn.Linear(4 * config.hidden, config.hidden),
            )
            for _ in range(config.layers)
        )
        self.to_rank = nn.Linear(config.hidden, config.rank)
        # low rank keeps the parameter count small
        self.out = nn.Linear(config.rank, config.out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return _split(self.out(self.to_rank(h)), self.config)


class Resampler(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.queries = nn.Parameter(torch.randn(config.seq_len, config.hidden) * 0.02)
        self.image_tokens = nn.Linear(config.in_dim, config.image_tokens * config.hidden)
        layer = nn.TransformerDecoderLayer(
            config.hidden,
            config.heads,
            4 * config.hidden,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.decoder = nn.TransformerDecoder(layer, config.layers)
        self.norm = nn.LayerNorm(config.hidden)
        self.to_tokens = nn.Linear(config.hidden, config.width)
        self.to_pooled = nn.Linear(config.hidden, config.pooled_width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        memory = self.image_tokens(x).view(batch, self.config.image_tokens, self.config.hidden)
        h = self.norm(self.decoder(self.queries.expand(batch, -1, -1), memory))
        return self.to_tokens(h), self.to_pooled(h.mean(1))


def _split(flat: torch.Tensor, config: ProjectorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = flat[:, : config.seq_len * config.width].view(-1, config.seq_len, config.width)
    return tokens, flat[:, config.seq_len * config.width :]


def build_projector(config: ProjectorConfig) -> nn.Module:
    if config.arch not in ARCHITECTURES:
        raise ValueError(
            f"unknown projector architecture {config.arch!r}: choose one of "
            f"{', '.join(ARCHITECTURES)}"
        )
    return {
        "kernel": KernelRidge,
        "linear": LowRankRidge,
        "mlp": ResidualMLP,
        "resampler": Resampler,
    }[config.arch](config)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters, plus fitted buffers for the closed-form model (they are its
    weights)."""
    if isinstance(model, LowRankRidge):
        return sum(b.numel() for b in model.buffers())
    return sum(p.numel() for p in model.parameters())


def checkpoint_values(model: nn.Module) -> int:
    """Every value the checkpoint holds: parameters and kept buffers (the size a person stores and
    loads, whichever of the two an architecture keeps its output basis in)."""
    return sum(value.numel() for value in model.state_dict().values())
