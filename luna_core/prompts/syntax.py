"""A parsed prompt and the choice of parser.

Each writer family reads a prompt by its own rules:

- `a1111` (AUTOMATIC1111, Forge, SD.Next, Fooocus): `(x)` ×1.1, `[x]` ÷1.1, `(x:w)`, `\\(` literal;
  BREAK; chunks of 75 tokens, each ending at its last comma when one is near.
- `comfy` (ComfyUI, SwarmUI): `(x)` ×1.1, `(x:w)` sets w, `[` is text; chunks of 75 tokens,
  words whole.
- `novelai` (NovelAI): `{x}` ×1.05, `[x]` ÷1.05; chunks of 75 tokens.
- `compel` (InvokeAI): Compel's own (`x++`, `(x)1.3`, `.and()`, `.blend()`), applied by the
  compel library.
- `literal` (anything else): the text as written; chunks of 75 tokens.

A parse never raises: what a writer would choke on is recorded in `notes` with the fallback taken.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

SYNTAXES = ("a1111", "comfy", "compel", "novelai", "literal")
PARSER_VERSION = "1"  # part of every parsed prompt's identity: a change of the rules is another row
# past this, the rest of a prompt is dropped (and said); no writer keeps more useful text
MAX_PROMPT_CHARS = 20_000

# Which syntax a catalogued generator's prompts follow (generations.generator).
GENERATOR_SYNTAX = {
    "AUTOMATIC1111": "a1111",
    "Forge": "a1111",
    "SD.Next": "a1111",
    "Fooocus": "a1111",
    "Civitai": "a1111",
    "ComfyUI": "comfy",
    "SwarmUI": "comfy",
    "Stability Matrix": "comfy",  # its text goes to a ComfyUI backend
    "InvokeAI": "compel",
    "NovelAI": "novelai",
}

# <lora:name:weight>, <lyco:...>, <hypernet:...>: A1111's extra networks (modules/extra_networks.py
# re_extra_net), which it removes from the text before encoding and applies to the model instead.
EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
# __name__: a Dynamic Prompts wildcard left unexpanded (the extension expands it before encoding).
WILDCARD = re.compile(r"__[\w\-/.*]+__")
# embedding:name (ComfyUI): a textual-inversion embedding, loaded by name; Luna cannot load it.
COMFY_EMBEDDING = re.compile(r"\bembedding:([^\s,()]+)", re.IGNORECASE)


@dataclass(frozen=True)
class Piece:
    text: str
    weight: float = 1.0


@dataclass(frozen=True)
class Removed:
    kind: str  # lora | lyco | hypernet | embedding | wildcard | <other extra network kind>
    name: str
    value: str = ""  # what followed the name (a LoRA's weight), as written


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt as its writer reads it: text pieces with their weights, in order; a new chunk starts
    at each index in `breaks`; what was taken out and never encoded; and notes on anything
    unsure."""

    syntax: str
    text: str
    pieces: tuple[Piece, ...]
    breaks: tuple[int, ...] = ()
    removed: tuple[Removed, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def plain(self) -> str:
        """The text that is encoded, without weights or breaks."""
        return "".join(p.text for p in self.pieces)

    @property
    def weighted(self) -> bool:
        return any(p.weight != 1.0 for p in self.pieces)

    @property
    def rules(self) -> str:
        """The rules that parsed it: part of the conditioning's identity (the same text under two
        writers is two conditionings)."""
        return f"{self.syntax}/{PARSER_VERSION}"

    def key(self) -> str:
        """SHA-256 of the rules and the exact text: the identity of its conditioning."""
        return conditioning_key(self.text, self.rules)

    def as_dict(self) -> dict:
        return {
            "syntax": self.syntax,
            "rules": self.rules,
            "pieces": [[p.text, round(p.weight, 6)] for p in self.pieces],
            "breaks": list(self.breaks),
            "removed": [{"kind": r.kind, "name": r.name, "value": r.value} for r in self.removed],
            "notes": list(self.notes),
        }


def conditioning_key(text: str, rules: str) -> str:
    """The key of a conditioning: the literal rules keep the plain text hash older homes used."""
    if rules.startswith("literal/"):
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    return hashlib.sha256(f"{rules}\n{text}".encode("utf-8")).hexdigest()


def chunk_key(key: str, index: int) -> str:
    """The catalog key of a conditioning's chunk row: its own key for the first, KEY#1, KEY#2...
    after it."""
    return key if index == 0 else f"{key}#{index}"


@dataclass
class Draft:
    """What a parser builds, then freezes."""

    syntax: str
    text: str
    pieces: list = field(default_factory=list)
    breaks: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def freeze(self) -> ParsedPrompt:
        merged: list[Piece] = []
        breaks = set(self.breaks)
        new_breaks = []
        for index, piece in enumerate(self.pieces):
            if index in breaks:
                new_breaks.append(len(merged))
            weight = piece.weight
            if not math.isfinite(weight):
                self.notes.append(
                    f"weight {weight} on {piece.text[:40]!r} is not a number a model can use: "
                    "encoded at 1.0"
                )
                weight = 1.0
            if merged and merged[-1].weight == weight and len(merged) not in new_breaks:
                merged[-1] = Piece(merged[-1].text + piece.text, weight)
            elif piece.text:
                merged.append(Piece(piece.text, weight))
        return ParsedPrompt(
            self.syntax,
            self.text,
            tuple(merged),
            tuple(sorted(set(new_breaks))),
            tuple(self.removed),
            tuple(dict.fromkeys(self.notes)),
        )


def bounded(text: str, draft: Draft) -> str:
    if len(text) > MAX_PROMPT_CHARS:
        draft.notes.append(
            f"the prompt is {len(text):,} characters; only the first {MAX_PROMPT_CHARS:,} are read"
        )
        return text[:MAX_PROMPT_CHARS]
    return text


def take_extra_networks(text: str, draft: Draft) -> str:
    """Remove <kind:name[:value]> tags (recording each), as A1111 does before encoding; an
    unterminated `<lora:` is left as text and noted."""

    def remove(match: re.Match) -> str:
        name, _, value = match.group(2).partition(":")
        draft.removed.append(Removed(match.group(1).lower(), name.strip(), value.strip()))
        return ""

    text = EXTRA_NETWORK.sub(remove, text)
    if re.search(r"<(lora|lyco|hypernet):", text, re.IGNORECASE):
        draft.notes.append(
            "an unterminated <lora:/<lyco:/<hypernet: tag is encoded as text, as its writer would"
        )
    return text


def take_wildcards(text: str, draft: Draft) -> str:
    def remove(match: re.Match) -> str:
        draft.removed.append(Removed("wildcard", match.group(0).strip("_")))
        return ""

    return WILDCARD.sub(remove, text)


def writer_overrides(text: str) -> dict[str, str]:
    """'ComfyUI=a1111, SwarmUI=comfy' → {"ComfyUI": "a1111", "SwarmUI": "comfy"}; ValueError
    naming the bad part."""
    overrides = {}
    for part in (p.strip() for p in (text or "").split(",")):
        if not part:
            continue
        generator, sep, syntax = (x.strip() for x in part.partition("="))
        if not sep or not generator or syntax not in SYNTAXES:
            raise ValueError(
                f"{part!r} is not GENERATOR=SYNTAX with SYNTAX one of {', '.join(SYNTAXES)}"
            )
        overrides[generator] = syntax
    return overrides


def syntax_case_sql(overrides: dict[str, str] | None = None, column: str = "generator") -> str:
    """SQL giving each generation's prompt syntax from its generator: the writers' own, then
    `overrides`."""
    mapping = {**GENERATOR_SYNTAX, **(overrides or {})}
    quoted = {g.replace("'", "''"): s for g, s in mapping.items()}
    return (
        f"CASE {column} "
        + " ".join(f"WHEN '{g}' THEN '{s}'" for g, s in quoted.items())
        + " ELSE 'literal' END"
    )


def syntax_for(generator: str | None, override: str | None = None) -> str:
    """The syntax a generator's prompts follow; `override` (a setting) wins when given."""
    if override and override != "auto":
        if override not in SYNTAXES:
            raise ValueError(
                f"prompt syntax {override!r} is not one of auto, {', '.join(SYNTAXES)}"
            )
        return override
    return GENERATOR_SYNTAX.get(generator or "", "literal")
