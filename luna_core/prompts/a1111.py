"""AUTOMATIC1111's prompt rules (also Forge, SD.Next and Fooocus, which follow them).

Read from its sources: `modules/extra_networks.py` (tags `<kind:name:args>` removed before
encoding), `modules/prompt_parser.py` (`get_learned_conditioning_prompt_schedules` for
`[from:to:when]` and `[a|b]`, then `parse_prompt_attention`), `modules/sd_hijack_clip.py` (chunks
of 75 tokens, BREAK, commas).

Attention, as `parse_prompt_attention` reads it: `(x)` multiplies by 1.1, `[x]` divides by 1.1,
`(x:w)` multiplies by w; `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal; brackets left open
apply to the rest of the prompt; a `)` or `]` with nothing open is text. Prompt editing changes
the text during sampling: a conditioning is one text, so Luna takes the text of the last steps
(`[from:to:when]` → `to`), and the first choice of an alternation `[a|b]`, and says so in the
notes.
"""

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

ROUND, SQUARE = 1.1, 1 / 1.1
# The tokens of parse_prompt_attention: escapes, brackets, a ':w)' weight close, text runs, a lone
# ':'.
ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|
\(|\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
INNER_SQUARE = re.compile(r"(?<!\\)\[([^\[\]]*?)(?<!\\)\]")
EDIT_FROM_TO = re.compile(r"^(.*?):(.*?):\s*([\d.]+)\s*$", re.S)
EDIT_TO = re.compile(r"^(.*?):\s*([\d.]+)\s*$", re.S)
# Placeholders for a plain [x] while schedules are resolved (characters no prompt holds).
OPEN_KEPT, CLOSE_KEPT = "\x01", "\x02"


def resolve_schedules(text: str, draft: Draft) -> str:
    """Prompt editing and alternation, innermost first, as the text of the last sampling steps."""
    for _ in range(len(text)):  # each pass removes one bracket pair: bounded by the text's length
        match = INNER_SQUARE.search(text)
        if match is None:
            break
        inside = match.group(1)
        if "|" in inside:
            replacement = inside.split("|")[0]
            draft.notes.append(
                f"alternation [{inside[:40]}] changes every step: encoded as its first choice"
            )
        elif edit := EDIT_FROM_TO.match(inside):
            replacement = edit.group(2)
            draft.notes.append(f"prompt editing [{inside[:40]}]: encoded as the last steps see it")
        elif edit := EDIT_TO.match(inside):
            replacement = edit.group(1)
            draft.notes.append(f"prompt editing [{inside[:40]}]: encoded as the last steps see it")
        else:
            replacement = OPEN_KEPT + inside + CLOSE_KEPT
        text = text[: match.start()] + replacement + text[match.end() :]
    return text.replace(OPEN_KEPT, "[").replace(CLOSE_KEPT, "]")


def parse_attention(text: str, draft: Draft) -> None:
    """parse_prompt_attention's reading of `text`, into the draft's pieces and breaks."""
    pieces: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, by: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= by

    for match in ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(pieces))
        elif token == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            try:
                multiply(round_open.pop(), float(weight))
            # '1.2.3' matches the pattern but is no number: A1111 would fail; Luna reads 1.0
            except ValueError:
                draft.notes.append(f"weight {weight!r} is not a number: read as 1.0")
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for index, part in enumerate(BREAK.split(token)):
                if index > 0:
                    draft.breaks.append(len(draft.pieces) + len(pieces))
                pieces.append([part, 1.0])
    if round_open or square_open:
        draft.notes.append("an unclosed bracket weights the rest of the prompt, as A1111 reads it")
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    draft.pieces.extend(Piece(text, weight) for text, weight in pieces)


def parse(text: str) -> ParsedPrompt:
    draft = Draft("a1111", text)
    body = take_wildcards(take_extra_networks(bounded(text, draft), draft), draft)
    parse_attention(resolve_schedules(body, draft), draft)
    return draft.freeze()
