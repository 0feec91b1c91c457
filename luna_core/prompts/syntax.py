"""A parsed prompt and the choice of parser.

Each writer family reads a prompt by its own rules:

- `a1111` (AUTOMATIC1111, Forge, SD.Next): `(x)` ×1.1, `[x]` ÷1.1, `(x:w)`, `\\(` literal;
  BREAK; chunks of 75 tokens, each ending at its last comma when one is near.
- `comfy` (ComfyUI cores from 2024-12-10, SwarmUI): `(x)` ×1.1, `(x:w)` sets w, `[` is text; each
  weighted segment tokenized whole, chunks of 75 tokens; `<lora:…>` is text to stock ComfyUI.
- `comfy_words` (ComfyUI cores before 2024-12-10): the same, tokenized word by word.
- `fooocus` (Fooocus): ComfyUI's parsing and word-by-word tokenizer, ComfyUI's weighting then
  A1111's mean restored per chunk and encoder; each of its texts (BREAK between) encoded alone.
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
from collections import Counter
from dataclasses import dataclass, field

SYNTAXES = ("a1111", "comfy", "comfy_words", "fooocus", "compel", "novelai", "literal")
# The ComfyUI syntaxes: its parser, its chunking (a group of 8 or more tokens may be split) and its
# weighting (from the empty prompt's encoding).
COMFY_FAMILY = ("comfy", "comfy_words", "fooocus")
# 2: A1111's emphasis per encoder, ComfyUI's segments and versions, Fooocus's own rules
PARSER_VERSION = "2"  # part of every parsed prompt's identity: a change of the rules is another row
# past this, the rest of a prompt is dropped (and said); no writer keeps more useful text
MAX_PROMPT_CHARS = 20_000

# Which syntax a catalogued generator's prompts follow (generations.generator).
GENERATOR_SYNTAX = {
    "AUTOMATIC1111": "a1111",
    "Forge": "a1111",
    "SD.Next": "a1111",
    "Fooocus": "fooocus",
    "FooocusPlus": "fooocus",  # the Fooocus pipeline, its own metadata
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

    def freeze(self, merge: bool = True) -> ParsedPrompt:
        """The parsed prompt; `merge` joins neighbouring pieces of one weight, as A1111's parser
        does (ComfyUI tokenizes each of its segments on its own: no merging there)."""
        merged: list[Piece] = []
        # one entry per BREAK: two in a row make an empty chunk, as A1111's tokenize_line does
        breaks = Counter(self.breaks)
        new_breaks: list[int] = []
        for index, piece in enumerate(self.pieces):
            new_breaks.extend([len(merged)] * breaks[index])
            weight = piece.weight
            if not math.isfinite(weight):
                self.notes.append(
                    f"weight {weight} on {piece.text[:40]!r} is not a number a model can use: "
                    "encoded at 1.0"
                )
                weight = 1.0
            if merge and merged and merged[-1].weight == weight and len(merged) not in new_breaks:
                merged[-1] = Piece(merged[-1].text + piece.text, weight)
            elif piece.text:
                merged.append(Piece(piece.text, weight))
        new_breaks.extend([len(merged)] * breaks[len(self.pieces)])
        return ParsedPrompt(
            self.syntax,
            self.text,
            tuple(merged),
            tuple(sorted(new_breaks)),
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


def syntax_case_sql(
    overrides: dict[str, str] | None = None, column: str = "generator", extra: str = "extra"
) -> str:
    """SQL giving each generation's prompt syntax: a setting's override for its generator, else
    the rules its file named (`extra.prompt_syntax`: a ComfyUI core version), else its generator's
    own."""
    mapping = {**GENERATOR_SYNTAX, **(overrides or {})}
    quoted = {g.replace("'", "''"): s for g, s in mapping.items()}
    by_generator = (
        f"CASE {column} "
        + " ".join(f"WHEN '{g}' THEN '{s}'" for g, s in quoted.items())
        + " ELSE 'literal' END"
    )
    overridden = ", ".join(f"'{g.replace(chr(39), chr(39) * 2)}'" for g in overrides or {})
    named = f"json_extract_string({extra}, '$.prompt_syntax')"
    known = ", ".join(f"'{s}'" for s in SYNTAXES)
    first = f"WHEN {column} IN ({overridden}) THEN {by_generator} " if overridden else ""
    return f"(CASE {first}WHEN {named} IN ({known}) THEN {named} ELSE {by_generator} END)"


# The writers whose empty negative prompt is zeros, not the empty string's encoding: A1111 on SDXL
# (sd_models_xl.py force_zero_negative_prompt). ComfyUI and Fooocus encode "" (start, end, padding).
ZERO_EMPTY_NEGATIVE = ("a1111",)
ZERO_EMPTY_NEGATIVE_SQL = ", ".join(f"'{s}'" for s in ZERO_EMPTY_NEGATIVE)

# ComfyUI tokenizes each weighted segment whole from core commit 1c8d11e4 (2024-12-10); cores
# before it word by word. Releases from 0.3.10 have it; 0.3.7 and older do not.
COMFY_SEGMENTS_SINCE = (2024, 12, 10)
COMFY_SEGMENTS_VERSION = (0, 3, 10)
COMFY_WORDS_BEFORE_VERSION = (0, 3, 8)


def comfy_rules_by_version(version: str) -> tuple[str, str] | None:
    """(syntax, why) from a ComfyUI core version a workflow recorded; None when it says
    nothing."""
    try:
        parts = tuple(int(x) for x in version.strip().lstrip("v").split(".")[:3])
    except ValueError:
        return None
    if parts >= COMFY_SEGMENTS_VERSION:
        return "comfy", f"ComfyUI core {version} (tokenizes weighted segments whole)"
    if parts < COMFY_WORDS_BEFORE_VERSION:
        return "comfy_words", f"ComfyUI core {version} (tokenizes word by word)"
    return None


def comfy_rules_by_date(year: int, month: int, day: int) -> tuple[str, str]:
    """(syntax, why) from a file's date, where its workflow recorded no core version."""
    date = f"{year:04d}-{month:02d}-{day:02d}"
    if (year, month, day) < COMFY_SEGMENTS_SINCE:
        return "comfy_words", f"no core version recorded; the file dates from {date}"
    return "comfy", f"no core version recorded; the file dates from {date}: the current rules"


def syntax_for(generator: str | None, override: str | None = None) -> str:
    """The syntax a generator's prompts follow; `override` (a setting) wins when given."""
    if override and override != "auto":
        if override not in SYNTAXES:
            raise ValueError(
                f"prompt syntax {override!r} is not one of auto, {', '.join(SYNTAXES)}"
            )
        return override
    return GENERATOR_SYNTAX.get(generator or "", "literal")
