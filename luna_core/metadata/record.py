"""The one normalized record every generator's metadata is parsed into."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_JSON_CHARS = 8 * 1024 * 1024
# What made the picture, as every writer says it: the fields a second source of the same file (a
# saver's text beside a graph, a Dream line beside sd-metadata) may fill when the first is silent.
SETTING_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg_scale",
    "sampler",
    "scheduler",
    "width",
    "height",
)


@dataclass
class Lora:
    name: str
    weight: float = 1.0


@dataclass
class GenerationRecord:
    """How an image was made, as far as its file tells. Unknown values stay None."""

    generator: str
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None
    scheduler: str | None = None
    cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    model: str | None = None
    model_hash: str | None = None
    loras: list[Lora] = field(default_factory=list)
    generator_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # settings without a column of their own
    raw: dict[str, str] = field(default_factory=dict)  # the metadata items, verbatim
    warnings: list[str] = field(default_factory=list)
    # Where the record was read: png:parameters, exif:UserComment, xmp, jpeg:COM, comfy:prompt,
    # comfy:workflow, alpha:stealth...; None when the file holds no generation metadata.
    source: str | None = None

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["loras"] = [{"name": lora.name, "weight": lora.weight} for lora in self.loras]
        return row


class MetadataError(ValueError):
    """Metadata present but unreadable; the image is still catalogued, with the reason."""


def load_json(text: str, what: str) -> Any:
    """json.loads with the failures of untrusted input (size, nesting, syntax) as MetadataError."""
    if len(text) > MAX_JSON_CHARS:
        raise MetadataError(f"{what}: JSON of {len(text):,} characters is over the bound")
    try:
        return json.loads(text)
    except RecursionError:
        raise MetadataError(f"{what}: JSON is nested too deeply to read") from None
    except ValueError as exc:
        raise MetadataError(f"{what}: not valid JSON ({exc})") from None


def looks_like_json_object(text: str | None) -> bool:
    return bool(text) and text.lstrip()[:1] == "{"


def as_int(value: Any) -> int | None:
    """An integer from a number or numeric string; None for anything else (never raises)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return None
            return int(number) if math.isfinite(number) and number == int(number) else None
    return None


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def parse_size(text: Any) -> tuple[int | None, int | None]:
    """'832x1216', '(1024, 1024)' or '1024×1024' → (width, height)."""
    if not isinstance(text, str):
        return None, None
    cleaned = text.strip().strip("()[]").replace("×", "x").replace(",", "x").replace("*", "x")
    parts = [p.strip() for p in cleaned.split("x")]
    if len(parts) != 2:
        return None, None
    return as_int(parts[0]), as_int(parts[1])
