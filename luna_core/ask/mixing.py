"""How an answer (the vault's or a projector's) meets a typed prompt: the one definition of each mix
mode, used by `luna condition`, `luna serve`, the ComfyUI nodes and the refiners alike.

- `replace`: the answer alone; the typed prompt is not used.
- `blend`: every part is `(1 - alpha) * typed + alpha * answer` (alpha: the answer's share):
  the tokens, the pooled vector, and the negative side the same way. The typed negative is the
  encoded negative prompt, or zeros (SDXL's empty negative) when none is given.
- `concat`: the typed prompt's tokens, then the answer's (`[154, D]`), pooled from the typed
  prompt; the negative likewise: typed negative tokens then the answer's, pooled from the typed
  negative.

Each side (positive, negative) is mixed by `mix_side`, so a tool that carries the two sides on
separate wires (ComfyUI) mixes each with the same rule.

Conditionings of different lengths (prompts of 1, 2, 3 … chunks of 77 tokens) meet by repetition
to the least common multiple of their chunk counts, as ComfyUI meets them: cross-attention over a
conditioning repeated n times equals attention over it once, so a repeated conditioning means
what it meant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from luna_core.errors import QueryError

MODES = ("replace", "blend", "concat")
DEFAULT_K = 5  # neighbours mixed into a vault answer
MAX_K = 200  # neighbours one answer may mix: a bound on the work one request asks for
# softmax temperature of the neighbour weights: near-ties share, a clear winner dominates
DEFAULT_TEMPERATURE = 0.05
DEFAULT_ALPHA = 0.5  # the answer's share in blend
CHUNK_TOKENS = 77
# past this least common multiple, conditionings are repeated to the longest and cut
MAX_CHUNKS = 12


class MixError(QueryError):
    """A mix mode, share or prompt that cannot be used as asked."""


class PromptMix(NamedTuple):
    """A typed prompt and how it meets an answer: `mode` replace (not used), blend (by `alpha`)
    or concat."""

    prompt: str | None = None
    negative_prompt: str | None = None
    mode: str = "replace"
    alpha: float = DEFAULT_ALPHA


class Parts(NamedTuple):
    """One conditioning's four parts, without a batch axis: tokens [T, D], pooled [P], and the
    negatives."""

    embeds: np.ndarray
    pooled: np.ndarray
    negative: np.ndarray
    negative_pooled: np.ndarray


def check_mix(mode: str, alpha: float, prompt: str | None) -> None:
    if mode not in MODES:
        raise MixError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise MixError(f"alpha must be within [0, 1] (got {alpha})")
    if prompt is None and mode != "replace":
        raise MixError(f"mode {mode} mixes the answer into a typed prompt: give --prompt")


def _join_tokens(parts: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts, axis=-2)


def common_length(lengths: Sequence[int]) -> int:
    """The token length conditionings of these lengths meet at: the least common multiple of their
    chunk counts (capped at MAX_CHUNKS chunks: then the longest)."""
    chunks = [max(1, length // CHUNK_TOKENS) for length in lengths]
    target = math.lcm(*chunks)
    return (target if target <= MAX_CHUNKS else max(chunks)) * CHUNK_TOKENS


def repeat_to(tokens, length: int, join: Callable[[Sequence], object] = _join_tokens):
    """`tokens` ([..., T, D]) repeated along the token axis to `length` (cut when it does not
    divide)."""
    current = tokens.shape[-2]
    if current == length:
        return tokens
    repeated = join([tokens] * -(-length // current))
    return repeated[..., :length, :]


def aligned(conditionings: Sequence, join: Callable[[Sequence], object] = _join_tokens) -> list:
    """Conditionings of token lengths that differ, repeated to their common length."""
    length = common_length([c.shape[-2] for c in conditionings])
    return [repeat_to(c, length, join) for c in conditionings]


def mix_side(
    typed_tokens,
    typed_pooled,
    tokens,
    pooled,
    mode: str,
    alpha: float,
    join: Callable[[Sequence], object] = _join_tokens,
):
    """One side (positive or negative): (tokens, pooled) of `mode`. Works on numpy arrays and torch
    tensors alike (`join` concatenates along the token axis, -2); a pooled vector may be None
    (left out)."""
    if mode == "replace":
        return tokens, pooled
    if mode == "blend":
        typed_tokens, tokens = aligned([typed_tokens, tokens], join)
        mixed_pooled = (
            None
            if typed_pooled is None or pooled is None
            else (1 - alpha) * typed_pooled + alpha * pooled
        )
        return (1 - alpha) * typed_tokens + alpha * tokens, mixed_pooled
    if mode == "concat":
        return join([typed_tokens, tokens]), typed_pooled
    raise MixError(f"mode {mode!r} is not one of {', '.join(MODES)}")


def mix(answer: Parts, typed: Parts | None, mode: str, alpha: float) -> Parts:
    """The answer with a typed prompt (`typed`: its four parts; None only with `replace`)."""
    if mode == "replace":
        return answer
    if typed is None:
        raise MixError(f"mode {mode} mixes the answer into a typed prompt: give --prompt")
    embeds, pooled = mix_side(typed.embeds, typed.pooled, answer.embeds, answer.pooled, mode, alpha)
    negative, negative_pooled = mix_side(
        typed.negative, typed.negative_pooled, answer.negative, answer.negative_pooled, mode, alpha
    )
    # a pipeline concatenates the two sides: one length
    embeds, negative = aligned([embeds, negative])
    return Parts(embeds, pooled, negative, negative_pooled)


def typed_parts(
    prompt: tuple[np.ndarray, np.ndarray], negative: tuple[np.ndarray, np.ndarray] | None
) -> Parts:
    """A typed prompt's parts from its encoding and its negative's (zeros when there is no
    negative)."""
    embeds, pooled = prompt
    negative_embeds, negative_pooled = (
        negative if negative is not None else (np.zeros_like(embeds), np.zeros_like(pooled))
    )
    return Parts(embeds, pooled, negative_embeds, negative_pooled)


def check_inputs(
    mode: str = "replace",
    alpha: float = DEFAULT_ALPHA,
    prompt: str | None = None,
    k: int | None = None,
    temperature: float | None = None,
) -> None:
    """One check of a query's settings, whichever source answers it (vault or projector)."""
    check_mix(mode, alpha, prompt)
    if k is not None and k <= 0:
        raise MixError(f"k must be at least 1 (got {k})")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise MixError(f"temperature must be a positive number (got {temperature})")
