"""InvokeAI's prompt rules are Compel's (`x++`, `(x)1.3`, `("a", "b").blend(…)`, `.and()`): Luna
hands the text to the `compel` library itself when encoding, never a re-implementation. The parse
records the text Compel will read, with the tags taken out."""

from __future__ import annotations

from luna_core.prompts.syntax import (
    Draft,
    ParsedPrompt,
    Piece,
    bounded,
    take_extra_networks,
    take_wildcards,
)


def parse(text: str) -> ParsedPrompt:
    draft = Draft("compel", text)
    body = take_wildcards(take_extra_networks(bounded(text, draft), draft), draft)
    draft.pieces.append(Piece(body))
    draft.notes.append("weights are Compel's: applied by the compel library when encoding")
    return draft.freeze()
