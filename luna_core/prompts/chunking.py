"""A parsed prompt's tokens and chunks as its writer makes them, for each SDXL tokenizer:

- `a1111`, `novelai`: each piece tokenized whole; a full chunk ends at its last comma when it lies
  within 20 tokens, and BREAK starts a new one (`sd_hijack_clip.py` `tokenize_line`). A1111's
  second encoder reads text through open_clip's tokenizer, which unescapes HTML entities such as
  `&amp;` first (`basic_clean`): so does Luna for that encoder.
- `comfy`: each weighted segment tokenized whole (ComfyUI's `sd1_clip.py` from 2024-12-10);
  `comfy_words` and `fooocus`: word by word (older cores, and Fooocus's copy of them). A group of 8
  or more tokens may be split at a chunk's end; a shorter one moves whole to the next chunk.
- `literal`: one chunk, cut at 75 tokens.

Every chunk is 77 ids: start, up to 75 tokens, end, then the tokenizer's padding (the end token for
SDXL's first tokenizer, 0 for the second)."""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass

import numpy as np

from luna_core.prompts.syntax import COMFY_FAMILY, ParsedPrompt

CHUNK = 75  # tokens between a chunk's start and end tokens
COMMA_BACKTRACK = 20  # A1111's comma_padding_backtrack default
COMFY_MAX_WORD = 8  # ComfyUI's max_word_length: longer groups may be split across chunks


@dataclass(frozen=True)
class Chunks:
    """Token ids per encoder (each [c, 77]), the weight of every position ([c, 77], 1.0 on
    specials), and the chunk at which each of the prompt's texts starts (Fooocus encodes several
    texts; every other writer one)."""

    ids: tuple[np.ndarray, np.ndarray]
    weights: np.ndarray
    starts: tuple[int, ...] = (0,)
    weights_2: np.ndarray | None = None  # the second encoder's, where its tokens differ

    @property
    def count(self) -> int:
        return len(self.weights)


def _words(parsed: ParsedPrompt, text: str) -> list[str]:
    """What the writer hands its tokenizer at a time, from one piece."""
    if parsed.syntax in ("comfy_words", "fooocus"):  # word by word
        return [w for w in text.replace("\n", " ").split(" ") if w]
    return [text]


def _groups(
    tokenizer, parsed: ParsedPrompt, unescape: bool = False
) -> list[list[tuple[int, float]] | None]:
    """(token id, weight) groups in order; None where a new chunk (or text) starts."""
    # Long pieces are expected (they are chunked here): the tokenizer's length warning is not ours.
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    out: list = []
    for index, piece in enumerate(parsed.pieces):
        out.extend([None] * parsed.breaks.count(index))
        text = piece.text
        if unescape:  # open_clip's basic_clean, before its BPE
            text = html.unescape(html.unescape(text))
        for word in _words(parsed, text):
            ids = tokenizer(word, add_special_tokens=False).input_ids
            out.append([(t, piece.weight) for t in ids])
    out.extend([None] * parsed.breaks.count(len(parsed.pieces)))
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


def _chunks_comfy(groups) -> tuple[list[list[tuple[int, float]]], list[int]]:
    """ComfyUI's tokenize_with_weights batching; a None (Fooocus's next text) starts its own chunks.
    Returns the chunks and the chunk at which each text starts."""
    chunks, chunk, starts = [], [], [0]
    for group in groups:
        if group is None:
            chunks.append(chunk)
            chunk = []
            starts.append(len(chunks))
            continue
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
    return chunks, starts


def chunk_tokens(tokenizers, parsed: ParsedPrompt, unescape: bool = True) -> Chunks:
    """The writer's chunks for both SDXL tokenizers (the same BPE; A1111's second one reads the
    text with HTML entities unescaped)."""
    per_encoder, weights, starts = [], [], (0,)
    for second, tokenizer in enumerate(tokenizers):
        groups = _groups(tokenizer, parsed, unescape and second and parsed.syntax == "a1111")
        if parsed.syntax in COMFY_FAMILY:
            chunks, text_starts = _chunks_comfy(groups)
            starts = tuple(text_starts)
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
        weights.append(chunk_weights)
    if len(per_encoder[0]) != len(per_encoder[1]):
        # unescaping moved a chunk's end for the second encoder only (A1111 could not join them
        # either): both read the text as written
        return chunk_tokens(tokenizers, parsed, unescape=False)
    second_weights = None if np.array_equal(weights[0], weights[1]) else weights[1]
    return Chunks((per_encoder[0], per_encoder[1]), weights[0], starts, second_weights)


def empty_ids(tokenizer) -> np.ndarray:
    """The empty prompt's ids [77]: start, end, then padding (ComfyUI's gen_empty_tokens)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = np.full(CHUNK + 2, pad, dtype=np.int64)
    ids[0], ids[1] = tokenizer.bos_token_id, tokenizer.eos_token_id
    return ids
