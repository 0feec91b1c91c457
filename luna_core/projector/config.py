"""What a projector is and how it is trained, as plain settings: importable without torch, so that
Dagster's definitions (and every process that loads them) do not pay torch's import."""

from __future__ import annotations

from dataclasses import asdict, dataclass

ARCHITECTURES = ("kernel", "linear", "mlp", "resampler")


@dataclass(frozen=True)
class ProjectorConfig:
    # closed-form kernel ridge: the one that beat the mean conditioning (see README)
    arch: str = "kernel"
    in_dim: int = 1024  # CLIP-ViT-H/14 image embedding
    seq_len: int = 77
    width: int = 2048  # SDXL: 768 + 1280
    pooled_width: int = 1280
    hidden: int = 256
    layers: int = 2
    heads: int = 4
    image_tokens: int = 4  # resampler: tokens the image embedding is expanded into
    rank: int = 48  # linear / kernel / mlp: rank of the output basis
    # kernel: training embeddings the kernel compares with (fewer when fewer pairs)
    anchors: int = 1024

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def out_dim(self) -> int:
        return self.seq_len * self.width + self.pooled_width


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int = 3  # epochs without a better val loss before stopping
    seed: int = 0
    min_train_pairs: int = 32
    min_val_pairs: int = 4
    # Ridge strengths relative to the embeddings' own variance (CLIP embeddings of one library
    # differ little, so an absolute strength drowns them); the linear model keeps the one best on
    # val.
    ridge_l2: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
    # kernel widths, x the anchors' median distance
    kernel_scales: tuple[float, ...] = (
        0.25,
        0.5,
        1.0,
        2.0,
        4.0,
    )
    basis_sample: int = 2048  # targets used to find the linear model's basis
    device: str = "auto"
    progress: bool = True
