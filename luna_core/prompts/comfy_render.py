"""A parsed prompt written again in ComfyUI's own syntax, for a ComfyUI graph's CLIP to encode.

Luna reads each library prompt by its writer's rules (luna_core.prompts); a ComfyUI graph's CLIP
reads ComfyUI's (`comfy/sd1_clip.py`: `(text:w)`, `\\(` for a literal bracket). Writing each parsed
piece as `(text:w)` gives the graph the writer's weights; each part between the writer's breaks
(A1111's BREAK) is encoded on its own and the parts joined, as the writer starts a new chunk there.
The weighting itself is then ComfyUI's (from the empty prompt), the graph checkpoint's dialect.
"""

from __future__ import annotations

from luna_core.prompts.syntax import ParsedPrompt, Piece


def _escaped(text: str) -> str:
    return text.replace("(", "\\(").replace(")", "\\)")


def _written(piece: Piece) -> str:
    text = _escaped(piece.text)
    if piece.weight == 1.0 or not text:
        return text
    # repr: the exact float, which ComfyUI's float() reads back unchanged
    return f"({text}:{piece.weight!r})"


def _compel_pieces(text: str) -> tuple[list[Piece], list[str]]:
    """Compel's own parser (a dependency) gives the fragments and their weights; a blend or an
    `.and()` of several prompts has no ComfyUI form: then the fragments' text, unweighted."""
    # compel pulls torch and transformers in: only Compel-syntax prompts pay for it
    from compel.prompt_parser import FlattenedPrompt, Fragment, PromptParser

    try:
        prompts = PromptParser().parse_conjunction(text).prompts
    except Exception as exc:  # Compel's parser on text it cannot read: the text as written
        return [Piece(text)], [f"Compel could not parse the prompt ({exc}): encoded as text"]
    if (
        len(prompts) == 1
        and isinstance(prompts[0], FlattenedPrompt)
        and all(isinstance(f, Fragment) for f in prompts[0].children)
    ):
        return [Piece(f.text, float(f.weight)) for f in prompts[0].children], []
    return [Piece(text)], ["Compel's .blend()/.and() has no ComfyUI form: encoded as text"]


def comfy_texts(parsed: ParsedPrompt) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(texts, notes): the prompt in ComfyUI's syntax, one text per part between breaks (at least
    one, "" for an empty prompt), and what could not be carried over."""
    pieces, notes = list(parsed.pieces), list(parsed.notes)
    breaks = set(parsed.breaks)
    if parsed.syntax == "compel" and parsed.plain.strip():
        pieces, more = _compel_pieces(parsed.plain)
        notes = [n for n in notes if "Compel's" not in n] + more
        spaced = [Piece(" ")] * len(pieces)
        pieces = [part for pair in zip(spaced, pieces) for part in pair][1:]
        breaks = set()
    parts: list[list[str]] = [[]]
    for i, piece in enumerate(pieces):
        if i in breaks and parts[-1]:
            parts.append([])
        parts[-1].append(_written(piece))
    return tuple("".join(part) for part in parts), tuple(notes)
