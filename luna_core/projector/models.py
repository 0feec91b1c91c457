"""Projector architectures: a CLIP-ViT image embedding in, an SDXL conditioning out
(`prompt_embeds [seq_len, width]` + `pooled [pooled_width]`). Each is one small class.

- `linear`: closed-form ridge regression onto a low-rank basis of the targets (fitted, not trained).
- `mlp`: a residual MLP with a low-rank output layer.
- `resampler`: `seq_len` learned queries attend, through a few transformer layers, to tokens made
  from the image embedding; a pooled head reads the mean of the queries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

ARCHITECTURES = ("linear", "mlp", "resampler")


@dataclass(frozen=True)
class ProjectorConfig:
    arch: str = "resampler"
    in_dim: int = 1024  # CLIP-ViT-H/14 image embedding
    seq_len: int = 77
    width: int = 2048  # SDXL: 768 + 1280
    pooled_width: int = 1280
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    image_tokens: int = 4  # resampler: tokens the image embedding is expanded into
    rank: int = 48  # linear / mlp: rank of the output basis

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def out_dim(self) -> int:
        return self.seq_len * self.width + self.pooled_width


class LowRankRidge(nn.Module):
    """y = mean + (x @ weight) @ basis; `fit` solves the ridge problem in closed form."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.zeros(config.out_dim))
        self.register_buffer("basis", torch.zeros(config.rank, config.out_dim))
        self.register_buffer("weight", torch.zeros(config.in_dim, config.rank))
        self.register_buffer("bias", torch.zeros(config.rank))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor, l2: float = 1e-2) -> None:
        """x [N, in_dim], y [N, out_dim] float32. The basis is the targets' top principal directions."""
        mean = y.mean(0)
        centered = y - mean
        rank = min(self.config.rank, *centered.shape)
        _, _, vh = torch.linalg.svd(centered, full_matrices=False)
        basis = vh[:rank]
        coeffs = centered @ basis.T  # [N, rank]
        x_mean = x.mean(0)
        xc = x - x_mean
        gram = xc.T @ xc + l2 * len(x) * torch.eye(x.shape[1])
        weight = torch.linalg.solve(gram, xc.T @ coeffs)
        self.mean.copy_(mean)
        self.basis.zero_()
        self.basis[:rank].copy_(basis)
        self.weight.zero_()
        self.weight[:, :rank].copy_(weight)
        self.bias.zero_()
        self.bias[:rank].copy_(-(x_mean @ weight))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = self.mean + (x @ self.weight + self.bias) @ self.basis
        return _split(flat, self.config)


class ResidualMLP(nn.Module):
    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.config = config
        self.inp = nn.Linear(config.in_dim, config.hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(config.hidden), nn.Linear(config.hidden, 4 * config.hidden), nn.GELU(),
                          nn.Linear(4 * config.hidden, config.hidden))
            for _ in range(config.layers)
        )
        self.to_rank = nn.Linear(config.hidden, config.rank)
        self.out = nn.Linear(config.rank, config.out_dim)  # low rank keeps the parameter count small

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
        layer = nn.TransformerDecoderLayer(config.hidden, config.heads, 4 * config.hidden, dropout=0.0,
                                           batch_first=True, norm_first=True)
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
        raise ValueError(f"unknown projector architecture {config.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
    return {"linear": LowRankRidge, "mlp": ResidualMLP, "resampler": Resampler}[config.arch](config)


def parameter_count(model: nn.Module) -> int:
    """Trainable parameters, plus fitted buffers for the closed-form model (they are its weights)."""
    if isinstance(model, LowRankRidge):
        return sum(b.numel() for b in model.buffers())
    return sum(p.numel() for p in model.parameters())
