"""NovelAI's prompt rules: `{x}` multiplies by 1.05 per brace, `[x]` divides by 1.05; brackets left
open weight the rest, as in A1111's reading (NovelAI publishes no parser; its documentation gives
the factors). V4's numeric `1.5::x::` weights are not read: they stay text, and the notes say so."""

from __future__ import annotations

import re

from luna_core.prompts.syntax import (
    Draft,
    ParsedPrompt,
    Piece,
    bounded,
    take_extra_networks,
    take_wildcards,
)

BRACE = 1.05
TOKENS = re.compile(r"\\[{}\[\]]|[{}\[\]]|[^\\{}\[\]]+|\\")


def parse(text: str) -> ParsedPrompt:
    draft = Draft("novelai", text)
    body = take_wildcards(take_extra_networks(bounded(text, draft), draft), draft)
    if "::" in body:
        draft.notes.append("V4 numeric weights (n::text::) are read as text")
    pieces: list[list] = []
    opened: dict[str, list[int]] = {"{": [], "[": []}
    factor = {"{": BRACE, "[": 1 / BRACE}
    closing = {"}": "{", "]": "["}
    for token in TOKENS.findall(body):
        if token.startswith("\\") and len(token) == 2:
            pieces.append([token[1], 1.0])
        elif token in opened:
            opened[token].append(len(pieces))
        elif token in closing and opened[closing[token]]:
            start = opened[closing[token]].pop()
            for piece in pieces[start:]:
                piece[1] *= factor[closing[token]]
        else:
            pieces.append([token, 1.0])
    for bracket, starts in opened.items():
        if starts:
            draft.notes.append("an unclosed bracket weights the rest of the prompt")
        for start in starts:
            for piece in pieces[start:]:
                piece[1] *= factor[bracket]
    draft.pieces.extend(Piece(t, w) for t, w in pieces)
    return draft.freeze()
