"""A parsed prompt encoded as its writer encodes it: chunks of 75 tokens between their own start and
end tokens (padded to 77), the two SDXL encoders' penultimate hidden states concatenated per
chunk, the chunks joined along the sequence axis ([77·c, 2048]), the pooled output from the first
chunk, and the weights applied by the writer's rule:

- `a1111` (and NovelAI, whose rule is not published: the notes say so): scale each token's
  hidden state by its weight, then restore the chunk's mean, each encoder's on its own (A1111's
  "Original" emphasis, `sd_emphasis.py`, run per text embedder);
- `comfy`, `comfy_words`: move each token from the empty prompt's encoding by its weight,
  `(z - z_empty) * w + z_empty` (ComfyUI's `sd1_clip.py` `encode_token_weights`);
- `fooocus`: ComfyUI's move, then each chunk's mean restored per encoder (`modules/patch_clip.py`);
- `compel`: the compel library encodes (its own weighting and chunking);
- `literal`: one chunk, truncated at 77 tokens, unweighted (Luna's earlier behaviour).

The chunks themselves are `chunking.py`'s.
"""

from __future__ import annotations

import numpy as np

from luna_core.prompts.chunking import Chunks, chunk_tokens, empty_ids
from luna_core.prompts.syntax import COMFY_FAMILY, ParsedPrompt

# Each syntax's weighting rule (apply_weights): A1111's for the rest.
WEIGHTING = {"comfy": "comfy", "comfy_words": "comfy", "fooocus": "fooocus"}


def _restore_means(before: np.ndarray, after: np.ndarray, split: int) -> np.ndarray:
    """Each chunk of each encoder rescaled to its own former mean: A1111's "Original" emphasis runs
    per text embedder on its [77, width] chunk, before the two are concatenated."""
    out = np.empty_like(after)
    for part in (slice(0, split), slice(split, None)):
        for index in range(len(after)):
            original = before[index, :, part].mean(dtype=np.float64)
            new = after[index, :, part].mean(dtype=np.float64)
            scale = original / new if new != 0 else 1.0
            out[index, :, part] = after[index, :, part] * scale
    return out


def apply_weights(
    hidden: np.ndarray,
    empty: np.ndarray | None,
    weights: np.ndarray,
    rule: str,
    split: int,
    weights_2: np.ndarray | None = None,
) -> np.ndarray:
    """Hidden states [c, 77, D] weighted per token ([c, 77]) by the writer's rule; `split` is the
    first encoder's width (D = split + the second's); `weights_2`, the second encoder's weights
    where its tokens differ (A1111's unescaped text)."""
    second = weights if weights_2 is None else weights_2
    if not ((weights != 1.0).any() or (second != 1.0).any()):
        return hidden
    if rule in ("comfy", "fooocus"):
        moved = (hidden - empty[None]) * weights[..., None] + empty[None]
        # Fooocus (modules/patch_clip.py) restores each chunk's mean after ComfyUI's interpolation
        return _restore_means(hidden, moved, split) if rule == "fooocus" else moved
    scaled = np.concatenate(
        [hidden[..., :split] * weights[..., None], hidden[..., split:] * second[..., None]], -1
    )
    return _restore_means(hidden, scaled, split)


def _needs_empty(parsed: ParsedPrompt, plan: Chunks) -> bool:
    """Whether the writer's weighting moves tokens from the empty prompt's encoding."""
    return parsed.syntax in COMFY_FAMILY and bool((plan.weights != 1.0).any())


def _empty(encoder) -> np.ndarray:
    tokenizers = (encoder.tokenizer, encoder.tokenizer_2)
    states, _ = encoder.encode_ids(empty_ids(tokenizers[0])[None], empty_ids(tokenizers[1])[None])
    return states[0]


def _pooled(parsed: ParsedPrompt, plan: Chunks, pooled: np.ndarray) -> np.ndarray:
    """The first chunk's pooled output; Fooocus adds up its texts' (`clip_encode(pool_top_k)`), all
    but the last when there are several: Fooocus V2's expansion comes last and is not pooled."""
    if parsed.syntax != "fooocus" or len(plan.starts) == 1:
        return pooled[0]
    return pooled[list(plan.starts[:-1])].sum(axis=0)


def _finish(encoder, parsed, plan, hidden, pooled, empty) -> tuple[np.ndarray, np.ndarray]:
    rule = WEIGHTING.get(parsed.syntax, "a1111")
    weighted = apply_weights(hidden, empty, plan.weights, rule, encoder.widths[0], plan.weights_2)
    return weighted.reshape(-1, weighted.shape[-1]), _pooled(parsed, plan, pooled)


def encode_parsed(encoder, parsed: ParsedPrompt) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_embeds [77·c, width], pooled [pooled_width]) float32 of a parsed prompt, as its
    writer encodes it; `encoder` is an SDXLTextEncoder."""
    if parsed.syntax == "compel":
        return encode_compel(encoder, parsed.plain)
    plan = chunk_tokens((encoder.tokenizer, encoder.tokenizer_2), parsed)
    hidden, pooled = encoder.encode_ids(*plan.ids)
    empty = _empty(encoder) if _needs_empty(parsed, plan) else None
    return _finish(encoder, parsed, plan, hidden, pooled, empty)


def encode_compel(encoder, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Compel's conditioning of `text` on SDXL's two encoders (CompelForSDXL: penultimate states,
    pooled from encoder 2); `encoder` offers the tokenizers and encoders under a pipeline's
    names."""
    # compel imports torch and the model libraries (about a second): only Compel prompts pay for it
    from compel import CompelForSDXL

    with encoder._torch.inference_mode():
        out = CompelForSDXL(encoder, device=str(encoder.device))(text)
    return out.embeds[0].float().cpu().numpy(), out.pooled_embeds[0].float().cpu().numpy()


def encode_many(encoder, parsed: list[ParsedPrompt]) -> list[tuple[np.ndarray, np.ndarray]]:
    """`encode_parsed` for a batch: every chunk of every prompt through the encoders in one call
    (Compel prompts through compel, one by one)."""
    tokenizers = (encoder.tokenizer, encoder.tokenizer_2)
    plans = [None if p.syntax == "compel" else chunk_tokens(tokenizers, p) for p in parsed]
    batched = [plan for plan in plans if plan is not None]
    out: list = [None] * len(parsed)
    if batched:
        hidden, pooled = encoder.encode_ids(
            np.concatenate([plan.ids[0] for plan in batched]),
            np.concatenate([plan.ids[1] for plan in batched]),
        )
        needed = any(_needs_empty(p, plan) for p, plan in zip(parsed, plans) if plan)
        empty = _empty(encoder) if needed else None
        start = 0
        for index, (prompt, plan) in enumerate(zip(parsed, plans)):
            if plan is None:
                continue
            rows = slice(start, start + plan.count)
            out[index] = _finish(encoder, prompt, plan, hidden[rows], pooled[rows], empty)
            start += plan.count
    for index, prompt in enumerate(parsed):
        if prompt.syntax == "compel":
            out[index] = encode_compel(encoder, prompt.plain)
    return out
