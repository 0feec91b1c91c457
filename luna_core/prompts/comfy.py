"""ComfyUI's prompt rules (also SwarmUI, which encodes through ComfyUI).

Read from `comfy/sd1_clip.py`: `escape_important` (`\\(` and `\\)` are literal), `parse_parentheses`
(top-level groups; an unclosed `(` or a stray `)` stays text), `token_weights` (`(x)` multiplies the
group's weight by 1.1, `(x:w)` *sets* it to w whatever the nesting), `[` has no meaning, and
`embedding:name` loads a textual inversion. Luna cannot load embeddings: they are taken out and
recorded. `<lora:…>` tags are text to ComfyUI's own nodes, but the LoRA-tag nodes people use take
them out and load the LoRA: Luna takes them out too, and says so.
"""

from __future__ import annotations

from luna_core.prompts.syntax import (
    COMFY_EMBEDDING,
    Draft,
    ParsedPrompt,
    Piece,
    Removed,
    bounded,
    take_extra_networks,
)

# past this nesting the inner text is read at the weight reached (no writer goes deeper)
MAX_DEPTH = 100
ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def parentheses(text: str) -> list[str]:
    """parse_parentheses: the top-level groups of `text`, each `(...)` whole, text between them
    as is."""
    groups, current, depth = [], "", 0
    for char in text:
        if char == "(":
            if depth == 0 and current:
                groups.append(current)
                current = ""
            current += char
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                groups.append(current + ")")
                current = ""
            else:
                current += char
        else:
            current += char
    if current:
        groups.append(current)
    return groups


def token_weights(text: str, draft: Draft) -> list[tuple[str, float]]:
    """token_weights, without recursion: (text, weight) pairs in order."""
    out: list[tuple[str, float]] = []
    stack = [(iter(parentheses(text)), 1.0)]
    while stack:
        groups, weight = stack[-1]
        group = next(groups, None)
        if group is None:
            stack.pop()
            continue
        if len(group) >= 2 and group[0] == "(" and group[-1] == ")":
            inner, inner_weight = group[1:-1], weight * 1.1
            colon = inner.rfind(":")
            if colon > 0:
                try:
                    inner_weight, inner = float(inner[colon + 1 :]), inner[:colon]
                except ValueError:
                    pass
            if len(stack) >= MAX_DEPTH:
                draft.notes.append(
                    f"parentheses nested past {MAX_DEPTH} levels: the inner text is read as text"
                )
                out.append((inner, inner_weight))
                continue
            stack.append((iter(parentheses(inner)), inner_weight))
        else:
            out.append((group, weight))
    return out


def parse(text: str) -> ParsedPrompt:
    draft = Draft("comfy", text)
    body = take_extra_networks(bounded(text, draft), draft)
    if any(r.kind in ("lora", "lyco") for r in draft.removed):
        draft.notes.append(
            "<lora:…> tags taken out, as ComfyUI's LoRA-tag nodes do (its own nodes would encode "
            "them)"
        )

    def embedding(match) -> str:
        draft.removed.append(Removed("embedding", match.group(1)))
        return ""

    body = COMFY_EMBEDDING.sub(embedding, body)
    if any(r.kind == "embedding" for r in draft.removed):
        draft.notes.append("textual-inversion embeddings are not loaded: encoded without them")
    for plain, escaped in ESCAPES:
        body = body.replace(plain, escaped)
    for piece, weight in token_weights(body, draft):
        for plain, escaped in ESCAPES:
            piece = piece.replace(escaped, plain[1:])
        draft.pieces.append(Piece(piece, weight))
    return draft.freeze()
