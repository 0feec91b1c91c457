"""How a row store keeps its values: float16, 8 bits per channel with a scale (int8), or a
per-store basis with error-bounded int8 coefficients and zstd (pca-zstd, the default for new text
stores: luna_core.vault.basis_codec).

The int8 codec keeps, for each row of shape [tokens, width], one float16 scale per channel (the
channel's largest magnitude over the row's tokens / 127) and the values rounded to int8 in units of
that scale: 77 x 2048 + 2 x 2048 bytes per SDXL chunk, 0.513 of float16's. Channels of a CLIP hidden
state differ in range by orders of magnitude (a few outlier channels), which is why the scale is per
channel rather than per row. `benchmarks/bench_text.py` measures its bytes and its cosine error.
Rows of one dimension (pooled vectors) are small and stay float16.
"""

from __future__ import annotations

import numpy as np

from luna_core.errors import LunaConfigError

FLOAT16, INT8, PCA_ZSTD = "float16", "int8", "pca-zstd"
CODECS = (FLOAT16, INT8, PCA_ZSTD)
DEFAULT_TEXT_CODEC = PCA_ZSTD
SCALE_SUFFIX = "_scale"  # the array that holds a coded array's scales: <name>_scale
# pca-zstd's per-store fit, one array each beside the codes: <name>_template, <name>_basis
TEMPLATE_SUFFIX, BASIS_SUFFIX = "_template", "_basis"
SIDE_SUFFIXES = (SCALE_SUFFIX, TEMPLATE_SUFFIX, BASIS_SUFFIX)


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise LunaConfigError(f"unknown vault codec {codec!r}: choose one of {', '.join(CODECS)}")
    return codec


def coded(codec: str, row_shape: tuple[int, ...]) -> bool:
    """Whether a field of this row shape is stored through the codec (else as float16)."""
    return codec in (INT8, PCA_ZSTD) and len(row_shape) >= 2


def row_arrays(codec: str, name: str, row_shape: tuple[int, ...]) -> dict[str, tuple]:
    """The arrays that hold a field's rows, each with its row shape and dtype: pca-zstd's codes
    are each token's coefficients' low bytes, their high bytes, then the token's step index."""
    if not coded(codec, row_shape):
        return {name: (tuple(row_shape), "float16")}
    if codec == INT8:
        return {name: (tuple(row_shape), "int8"), name + SCALE_SUFFIX: (row_shape[-1:], "float16")}
    return {name: ((*row_shape[:-1], 2 * row_shape[-1] + 1), "uint8")}


def field_shape(codec: str, stored: tuple[int, ...]) -> tuple[int, ...]:
    """A field's row shape from the shape of the array that stores it."""
    if codec == PCA_ZSTD and len(stored) >= 2:
        return (*stored[:-1], (stored[-1] - 1) // 2)
    return tuple(stored)


def encode_int8(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 values, float16 scales [n, width]) of rows [n, tokens, width]."""
    values = np.asarray(rows, dtype=np.float32)
    scale = (np.abs(values).max(axis=1) / 127.0).astype(np.float16)
    scale[scale == 0] = 1.0  # an all-zero channel: any scale decodes it to zero
    quantized = np.clip(np.rint(values / scale.astype(np.float32)[:, None, :]), -127, 127).astype(
        np.int8
    )
    return quantized, scale


def decode_int8(quantized: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float16 rows [n, tokens, width] from int8 values and their float16 scales [n, width]."""
    return (quantized.astype(np.float32) * scale.astype(np.float32)[:, None, :]).astype(np.float16)
