"""A parsed prompt encoded as its writer encodes it: chunks of 75 tokens between their own start and
end tokens (padded to 77), the two SDXL encoders' penultimate hidden states concatenated per
chunk, the chunks joined along the sequence axis ([77·c, 2048]), the pooled output from the first
chunk, and the weights applied by the writer's rule:

- `a1111` (and NovelAI, whose rule is not published: the notes say so): scale each token's
  hidden state by its weight, then restore the chunk's mean (A1111's "Original" emphasis,
  `sd_hijack_clip.py`);
- `comfy`: move each token from the empty prompt's encoding by its weight, `(z - z_empty) * w +
  z_empty` (ComfyUI's `sd1_clip.py` `encode_token_weights`);
- `compel`: the compel library encodes (its own weighting and chunking);
- `literal`: one chunk, truncated at 77 tokens, unweighted (Luna's earlier behaviour).

Chunking: A1111 ends a full chunk at its last comma when it lies within 20 tokens, and starts a
new one at BREAK; ComfyUI keeps words whole (a word of 8 tokens or more may be split).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from luna_core.prompts.syntax import ParsedPrompt

CHUNK = 75  # tokens between a chunk's start and end tokens
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
COMFY_MAX_WORD = 8  # ComfyUI's max_word_length: longer words may be split across chunks


@dataclass(frozen=True)
class Chunks:
    """Token ids per encoder (each [c, 77]) and the weight of every position ([c, 77], 1.0 on
    specials)."""

    ids: tuple[np.ndarray, np.ndarray]
    weights: np.ndarray

    @property
    def count(self) -> int:
        return len(self.weights)


def _pieces_tokens(tokenizer, parsed: ParsedPrompt) -> list[list[tuple[int, float]]]:
    """Per piece, its (token id, weight) pairs; a piece starting a new chunk (BREAK) is marked by
    None."""
    # Long pieces are expected (they are chunked here): the tokenizer's length warning is not for
    # us.
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    out = []
    for index, piece in enumerate(parsed.pieces):
        if index in parsed.breaks:
            out.append(None)
        if parsed.syntax == "comfy":  # word by word, as ComfyUI tokenizes
            words = [w for w in piece.text.replace("\n", " ").split(" ") if w]
            for word in words:
                out.append(
                    [(t, piece.weight) for t in tokenizer(word, add_special_tokens=False).input_ids]
                )
        else:
            out.append(
                [
                    (t, piece.weight)
                    for t in tokenizer(piece.text, add_special_tokens=False).input_ids
                ]
            )
    return out


def _chunks_a1111(groups, comma: int) -> list[list[tuple[int, float]]]:
    chunks, chunk, last_comma = [], [], -1
    for group in groups:
        if group is None:  # BREAK
            chunks.append(chunk)
            chunk, last_comma = [], -1
            continue
        for token in group:
            if token[0] == comma:
                last_comma = len(chunk)
            elif (
                len(chunk) == CHUNK
                and last_comma != -1
                and len(chunk) - last_comma <= COMMA_BACKTRACK
            ):
                moved = chunk[last_comma + 1 :]
                chunks.append(chunk[: last_comma + 1])
                chunk, last_comma = moved, -1
            if len(chunk) == CHUNK:
                chunks.append(chunk)
                chunk, last_comma = [], -1
            chunk.append(token)
    if chunk or not chunks:
        chunks.append(chunk)
    return chunks


def _chunks_comfy(groups) -> list[list[tuple[int, float]]]:
    chunks, chunk = [], []
    for group in groups:
        if group is None:
            continue  # ComfyUI has no BREAK
        word = list(group)
        large = len(word) >= COMFY_MAX_WORD
        while word:
            if len(word) + len(chunk) > CHUNK:
                room = CHUNK - len(chunk)
                if large:
                    chunk.extend(word[:room])
                    word = word[room:]
                chunks.append(chunk)
                chunk = []
            else:
                chunk.extend(word)
                word = []
    chunks.append(chunk)
    return chunks


def chunk_tokens(tokenizers, parsed: ParsedPrompt) -> Chunks:
    """The writer's chunks for both SDXL tokenizers (they agree on every token boundary: the same
    BPE)."""
    per_encoder, weights = [], None
    for tokenizer in tokenizers:
        groups = _pieces_tokens(tokenizer, parsed)
        if parsed.syntax == "comfy":
            chunks = _chunks_comfy(groups)
        elif parsed.syntax == "literal":
            flat = [t for g in groups if g for t in g]
            chunks = [flat[:CHUNK]]
        else:
            comma = tokenizer(",", add_special_tokens=False).input_ids[0]
            chunks = _chunks_a1111(groups, comma)
        start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
        ids = np.full((len(chunks), CHUNK + 2), pad, dtype=np.int64)
        chunk_weights = np.ones((len(chunks), CHUNK + 2), dtype=np.float32)
        for row, chunk in enumerate(chunks):
            ids[row, 0] = start
            ids[row, 1 : 1 + len(chunk)] = [t for t, _ in chunk]
            ids[row, 1 + len(chunk)] = end
            chunk_weights[row, 1 : 1 + len(chunk)] = [w for _, w in chunk]
        per_encoder.append(ids)
        weights = chunk_weights if weights is None else weights
    return Chunks((per_encoder[0], per_encoder[1]), weights)


def apply_weights(
    hidden: np.ndarray, empty: np.ndarray | None, weights: np.ndarray, rule: str
) -> np.ndarray:
    """Hidden states [c, 77, D] weighted per token ([c, 77]) by the writer's rule."""
    if not (weights != 1.0).any():
        return hidden
    if rule == "comfy":
        return (hidden - empty[None]) * weights[..., None] + empty[None]
    out = np.empty_like(hidden)
    for index, (chunk, chunk_weights) in enumerate(zip(hidden, weights)):
        original = chunk.mean(dtype=np.float64)
        scaled = chunk * chunk_weights[:, None]
        new = scaled.mean(dtype=np.float64)
        out[index] = scaled * (original / new) if new != 0 else scaled
    return out


def empty_ids(tokenizer) -> np.ndarray:
    """The empty prompt's ids [77]: start, end, then padding (ComfyUI's gen_empty_tokens)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = np.full(CHUNK + 2, pad, dtype=np.int64)
    ids[0], ids[1] = tokenizer.bos_token_id, tokenizer.eos_token_id
    return ids


def encode_parsed(encoder, parsed: ParsedPrompt) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_embeds [77·c, width], pooled [pooled_width]) float32 of a parsed prompt, as its
    writer encodes it; `encoder` is an SDXLTextEncoder."""
    if parsed.syntax == "compel":
        return encode_compel(encoder, parsed.plain)
    tokenizers = (encoder.tokenizer, encoder.tokenizer_2)
    chunks = chunk_tokens(tokenizers, parsed)
    hidden, pooled = encoder.encode_ids(*chunks.ids)
    empty = None
    if parsed.syntax == "comfy" and (chunks.weights != 1.0).any():
        empty, _ = encoder.encode_ids(
            empty_ids(tokenizers[0])[None], empty_ids(tokenizers[1])[None]
        )
        empty = empty[0]
    weighted = apply_weights(
        hidden, empty, chunks.weights, "comfy" if parsed.syntax == "comfy" else "a1111"
    )
    return weighted.reshape(-1, weighted.shape[-1]), pooled[0]


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
        empty = None
        if any(
            p.syntax == "comfy" and (plan.weights != 1.0).any()
            for p, plan in zip(parsed, plans)
            if plan
        ):
            empty, _ = encoder.encode_ids(
                empty_ids(tokenizers[0])[None], empty_ids(tokenizers[1])[None]
            )
            empty = empty[0]
        start = 0
        for index, (prompt, plan) in enumerate(zip(parsed, plans)):
            if plan is None:
                continue
            states = hidden[start : start + plan.count]
            weighted = apply_weights(
                states, empty, plan.weights, "comfy" if prompt.syntax == "comfy" else "a1111"
            )
            out[index] = (weighted.reshape(-1, weighted.shape[-1]), pooled[start])
            start += plan.count
    for index, prompt in enumerate(parsed):
        if prompt.syntax == "compel":
            out[index] = encode_compel(encoder, prompt.plain)
    return out
