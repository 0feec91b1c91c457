"""The `pca-zstd` codec: a conditioning row kept in about a quarter of float16's bytes, each token
within a cosine error of 9e-4 of what it was.

Per store, fitted on its first write: a template (the mean token at each of the row's positions:
the start token is the same in every prompt, the padding after the end token varies little) and an
orthonormal basis per block of channels (principal axes of the residuals; blocks of at most 128
channels, so a decode is small matrix products). A token is kept as its residual's coefficients in
that basis, rounded to integers in units of a step chosen for that token: the largest step on a
2^(1/8) grid whose decoded token is within `TARGET_COSINE_ERROR` of the original. Equal steps across
a token's coefficients spend the bits where the variance is (reverse water-filling), and zstd then
codes the mostly small integers. A code q is 16 bits kept as two signed byte planes, q = low +
256 high with low in -128..127: the high plane is almost all zeros (it costs nearly nothing
compressed, and a reader skips it when it is) but lets a token whose residual lies along one axis
(an outlier channel) meet the bound. The rows are stored
channel-major (a zarr transpose codec), so each coefficient's run of 77 values sits together.

The error bound holds whatever the basis: a poor fit (a first write of a few rows) costs bytes, not
accuracy. `luna doctor --recode` refits on the whole store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TARGET_COSINE_ERROR = 9e-4  # below the 1e-3 goal: float16 output rounding stays well within
BLOCK_MAX = 128
STEP_OFFSET, STEP_PER_OCTAVE = 192, 8  # step = 2^((k - 192) / 8), k in 0..255: 2^-24 .. 2^7.9
SEARCH_ROUNDS = 8  # a binary search over the 256 steps
LIMIT = 127 * 256 + 127  # the largest code two signed bytes hold (low + 256 high)


def block_width(width: int) -> int:
    """The largest divisor of the width not above BLOCK_MAX (SDXL: 128, within each encoder's
    channels)."""
    return max(b for b in range(1, min(width, BLOCK_MAX) + 1) if width % b == 0)


def step_of(k: np.ndarray) -> np.ndarray:
    return np.exp2((k.astype(np.float32) - STEP_OFFSET) / STEP_PER_OCTAVE)


@dataclass(frozen=True)
class Basis:
    template: np.ndarray  # [tokens, width] float32
    blocks: np.ndarray  # [width / b, b, b] float32, each block's columns orthonormal

    @classmethod
    def fit(cls, rows: np.ndarray) -> "Basis":
        values = np.asarray(rows, dtype=np.float64)
        template = values.mean(0)
        residual = (values - template).reshape(-1, values.shape[-1])
        width = block_width(values.shape[-1])
        blocks = []
        for start in range(0, values.shape[-1], width):
            part = residual[:, start : start + width]
            _, vectors = np.linalg.eigh(part.T @ part)
            blocks.append(vectors[:, ::-1])  # the largest variance first
        return cls(template.astype(np.float32), np.stack(blocks).astype(np.float32))

    def valid(self) -> bool:
        """Whether these are a complete fit (a crash while writing them leaves zeros)."""
        if not (np.isfinite(self.template).all() and np.isfinite(self.blocks).all()):
            return False
        gram = np.matmul(self.blocks.transpose(0, 2, 1), self.blocks)
        return bool(np.abs(gram - np.eye(self.blocks.shape[-1])).max() < 1e-3)

    def _forward(self, values: np.ndarray) -> np.ndarray:
        lead, width = values.shape[:-1], values.shape[-1]
        nb, b, _ = self.blocks.shape
        flat = values.reshape(-1, nb, b).transpose(1, 0, 2)
        return np.matmul(flat, self.blocks).transpose(1, 0, 2).reshape(*lead, width)

    def _inverse(self, coefficients: np.ndarray) -> np.ndarray:
        lead, width = coefficients.shape[:-1], coefficients.shape[-1]
        nb, b, _ = self.blocks.shape
        flat = np.ascontiguousarray(coefficients.reshape(-1, nb, b).transpose(1, 0, 2))
        out = np.matmul(flat, self.blocks.transpose(0, 2, 1))
        return out.transpose(1, 0, 2).reshape(*lead, width)

    def encode(self, rows: np.ndarray) -> tuple[np.ndarray, float]:
        """(uint8 codes [n, tokens, 2 width + 1]: each token's coefficients' low bytes, their high
        bytes, then its step index; the largest token cosine error)."""
        values = np.asarray(rows, dtype=np.float32)
        coefficients = self._forward(values - self.template)
        # The error of a step, without decoding: x's coordinates in the basis (plus the template's)
        # and the rounding's difference give |x|, <x, x'> and |x'| (the basis is orthonormal).
        coords = coefficients + self._forward(np.broadcast_to(self.template, values.shape[1:]))
        norm2 = (values.astype(np.float64) ** 2).sum(-1)

        def error(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            step = step_of(k)[..., None]
            codes = np.clip(np.rint(coefficients / step), -LIMIT, LIMIT)
            diff = coefficients - codes * step
            dot = norm2 - (coords * diff).sum(-1, dtype=np.float64)
            decoded2 = (
                norm2
                - 2 * (coords * diff).sum(-1, dtype=np.float64)
                + (diff.astype(np.float64) ** 2).sum(-1)
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                cosine = dot / np.sqrt(norm2 * decoded2)
            return np.where(norm2 > 0, 1 - cosine, np.where(decoded2 > 0, 1.0, 0.0)), codes

        # Below the smallest step that keeps every coefficient within 16 bits the error grows
        # again: search from there up (the error grows with the step), to the largest meeting it.
        peak = np.abs(coefficients).max(-1)
        with np.errstate(divide="ignore"):
            unclipped = np.ceil(STEP_PER_OCTAVE * np.log2(peak / LIMIT) + STEP_OFFSET)
        low = np.clip(np.nan_to_num(unclipped, neginf=0), 0, 255).astype(np.int64)
        high = np.full(norm2.shape, 256, np.int64)  # the smallest step known to miss it
        for _ in range(SEARCH_ROUNDS + 1):
            middle = (low + high) // 2
            met = error(middle)[0] <= TARGET_COSINE_ERROR
            low, high = np.where(met, middle, low), np.where(met, high, middle)
        errors, codes = error(low)
        width = values.shape[-1]
        codes = codes.astype(np.int32)
        low_byte = (codes + 128) % 256 - 128
        out = np.empty((*values.shape[:-1], 2 * width + 1), np.uint8)
        out[..., :width] = low_byte.astype(np.int8).view(np.uint8)
        out[..., width:-1] = ((codes - low_byte) // 256).astype(np.int8).view(np.uint8)
        out[..., -1] = low
        return out, float(errors.max()) if errors.size else 0.0

    def coefficients(self, codes: np.ndarray) -> np.ndarray:
        """float32 coefficients [..., tokens, width] from codes (any strides: the store hands them
        channel-major, as kept): a row is template + inverse(these), so a weighted sum of rows is
        finished once, on the sum (`finish`)."""
        # torch converts and scales the strided bytes in one multi-threaded pass, where numpy
        # takes several; the processes that decode conditionings run models and have it loaded
        import torch

        signed = torch.from_numpy(codes.view(np.int8))
        width = (codes.shape[-1] - 1) // 2
        low, high = signed[..., :width], signed[..., width:-1]
        step = torch.exp2(
            (torch.from_numpy(codes[..., -1]).float() - STEP_OFFSET) / STEP_PER_OCTAVE
        )
        # token-major and contiguous, as the rows are summed: one pass reads the strided bytes
        out = torch.empty(codes.shape[:-1] + (width,), dtype=torch.float32)
        torch.mul(low, step[..., None], out=out)
        if bool(high.any()):
            out += high.float() * (step[..., None] * 256)
        return out.numpy()

    def finish(self, summed: np.ndarray, total_weight: float = 1.0) -> np.ndarray:
        """float32 rows [..., tokens, width] from a weighted sum of coefficients (weights adding up
        to `total_weight`)."""
        # torch, like the weighted sum before it: numpy's BLAS threads beside torch's spinning
        # ones slow both several times over
        import torch

        lead, width = summed.shape[:-1], summed.shape[-1]
        nb, b, _ = self.blocks.shape
        flat = torch.from_numpy(np.ascontiguousarray(summed, dtype=np.float32))
        flat = flat.reshape(-1, nb, b).transpose(0, 1)
        blocks = torch.from_numpy(self.blocks).transpose(1, 2)
        out = torch.bmm(flat, blocks).transpose(0, 1).reshape(*lead, width)
        return (out + torch.from_numpy(self.template) * float(total_weight)).numpy()

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """float16 rows [n, tokens, width] from their codes."""
        return self.finish(self.coefficients(codes)).astype(np.float16)
