"""One entry point for every writer's parser."""

from __future__ import annotations

from luna_core.prompts import a1111, comfy, compel_syntax, novelai
from luna_core.prompts.syntax import SYNTAXES, Draft, ParsedPrompt, Piece, bounded

PARSERS = {
    "a1111": a1111.parse,
    "comfy": comfy.parse,
    "comfy_words": lambda text: comfy.parse(text, "comfy_words"),
    "fooocus": lambda text: comfy.parse(text, "fooocus"),
    "compel": compel_syntax.parse,
    "novelai": novelai.parse,
}


def parse_literal(text: str) -> ParsedPrompt:
    draft = Draft("literal", text)
    draft.pieces.append(Piece(bounded(text, draft)))
    return draft.freeze()


def parse(text: str | None, syntax: str) -> ParsedPrompt:
    """`text` read by the rules of `syntax` (one of SYNTAXES); a parse never raises on the text."""
    if syntax == "literal":
        return parse_literal(text or "")
    if syntax not in PARSERS:
        raise ValueError(f"prompt syntax {syntax!r} is not one of {', '.join(SYNTAXES)}")
    return PARSERS[syntax](text or "")
