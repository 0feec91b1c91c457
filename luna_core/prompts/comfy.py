"""ComfyUI's prompt rules (also SwarmUI, which encodes through ComfyUI).

Read from `comfy/sd1_clip.py`: `escape_important` (`\\(` and `\\)` are literal), `parse_parentheses`
(top-level groups; an unclosed `(` or a stray `)` stays text), `token_weights` (`(x)` multiplies the
group's weight by 1.1, `(x:w)` *sets* it to w whatever the nesting), `[` has no meaning, and
`embedding:name` loads a textual inversion. Luna cannot load embeddings: they are taken out and
recorded (as ComfyUI skips an embedding it does not have). `<lora:…>` tags are text to ComfyUI's
own nodes: they are encoded, and noted. A graph whose LoRA-tag node took them out hands its
encoder the text without them, and that text is what the catalog stores.
"""

from __future__ import annotations

from luna_core.prompts.syntax import (
    COMFY_EMBEDDING,
    EXTRA_NETWORK,
    Draft,
    ParsedPrompt,
    Piece,
    Removed,
    bounded,
)

# past this nesting the inner text is read at the weight reached (no writer goes deeper)
MAX_DEPTH = 100
ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))
FOOOCUS_TEXTS = " BREAK "  # how the catalog joins the texts of Fooocus's full_prompt


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


def parse(text: str, syntax: str = "comfy") -> ParsedPrompt:
    """`text` by ComfyUI's rules; `syntax` names the tokenizer (comfy: segments whole, cores from
    2024-12-10; comfy_words: word by word, older cores) or Fooocus, which reads ComfyUI's syntax.
    Fooocus takes `<lora:name:weight>` out before it writes `full_prompt` (modules/util.py), so a
    tag still there was encoded as text, as ComfyUI's is."""
    draft = Draft(syntax, text)
    body = bounded(text, draft)
    if EXTRA_NETWORK.search(body):
        names = ", ".join(m.group(2).partition(":")[0] for m in EXTRA_NETWORK.finditer(body))
        draft.notes.append(
            f"<lora:…> tags are encoded as text, as stock ComfyUI does (LoRAs mentioned, not "
            f"applied by the text: {names})"
        )

    def embedding(match) -> str:
        draft.removed.append(Removed("embedding", match.group(1)))
        return ""

    body = COMFY_EMBEDDING.sub(embedding, body)
    if any(r.kind == "embedding" for r in draft.removed):
        draft.notes.append("textual-inversion embeddings are not loaded: encoded without them")
    # Fooocus encodes each of its texts on its own (the catalog joins them by BREAK)
    texts = body.split(FOOOCUS_TEXTS) if syntax == "fooocus" else [body]
    for index, one in enumerate(texts):
        if index:
            draft.breaks.append(len(draft.pieces))
        for plain, escaped in ESCAPES:
            one = one.replace(plain, escaped)
        for piece, weight in token_weights(one, draft):
            for plain, escaped in ESCAPES:
                piece = piece.replace(escaped, plain[1:])
            draft.pieces.append(Piece(piece, weight))
    # ComfyUI tokenizes each segment on its own: merging two would change the tokens and chunks
    return draft.freeze(merge=False)
