"""AUTOMATIC1111 / Forge 'parameters' text: prompt lines, 'Negative prompt:' lines, settings
line."""

from __future__ import annotations

import json
import re

from luna_core.metadata.record import GenerationRecord, Lora, as_float, as_int, parse_size

NEGATIVE_PREFIX = "Negative prompt:"
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)
_KEY = re.compile(r"\s*([A-Za-z0-9][\w \-/.()]*?):\s*")
_SCHEDULER_SUFFIXES = ("Karras", "Exponential", "SGM Uniform", "Polyexponential", "Beta", "Simple")
MAX_SETTINGS = 500


def parse_settings_line(line: str) -> list[tuple[str, str]]:
    """'Steps: 20, Sampler: Euler a, Hashes: {"a": "b, c"}' → [(key, value), ...].

    Values may be quoted (JSON-escaped, may hold commas) or a JSON object/array (may hold commas).
    """
    pairs: list[tuple[str, str]] = []
    pos, size = 0, len(line)
    while pos < size and len(pairs) < MAX_SETTINGS:
        while pos < size and line[pos] in ", ":
            pos += 1
        match = _KEY.match(line, pos)
        if not match:
            break
        key, pos = match.group(1).strip(), match.end()
        if pos < size and line[pos] == '"':
            end = _end_of_quoted(line, pos)
            raw = line[pos:end]
            try:
                value = json.loads(raw)
                value = value if isinstance(value, str) else raw.strip('"')
            except ValueError:
                value = raw.strip('"')
        elif pos < size and line[pos] in "{[":
            end = _end_of_bracketed(line, pos)
            value = line[pos:end]
        else:
            end = line.find(",", pos)
            end = size if end < 0 else end
            value = line[pos:end].strip()
        pairs.append((key, value))
        pos = end
    return pairs


def _end_of_quoted(text: str, start: int) -> int:
    pos = start + 1
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == '"':
            return pos + 1
        pos += 1
    return len(text)


def _end_of_bracketed(text: str, start: int) -> int:
    depth, pos, in_string = 0, start, False
    while pos < len(text):
        char = text[pos]
        if in_string:
            if char == "\\":
                pos += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return len(text)


def loras_in_prompt(prompt: str | None) -> list[Lora]:
    loras = []
    for match in _LORA_TAG.finditer(prompt or ""):
        weight = as_float((match.group(2) or "").strip())
        loras.append(Lora(match.group(1).strip(), 1.0 if weight is None else weight))
    return loras


def strip_lora_tags(prompt: str) -> str:
    return re.sub(r"[ \t]{2,}", " ", _LORA_TAG.sub("", prompt)).strip()


def parse_a1111(text: str, generator: str = "AUTOMATIC1111") -> GenerationRecord:
    """Parse the infotext that AUTOMATIC1111 and Forge write (the same text in PNG and EXIF)."""
    lines = text.strip("\r\n").replace("\r\n", "\n").split("\n")
    settings: list[tuple[str, str]] = []
    if lines and len(parse_settings_line(lines[-1])) >= 3:
        settings = parse_settings_line(lines.pop())
    prompt_lines: list[str] = []
    negative_lines: list[str] | None = None
    for line in lines:
        if negative_lines is None and line.startswith(NEGATIVE_PREFIX):
            negative_lines = [line[len(NEGATIVE_PREFIX) :].lstrip()]
        elif negative_lines is not None:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    record = GenerationRecord(generator=generator)
    record.prompt = "\n".join(prompt_lines).strip()
    record.negative_prompt = (
        "\n".join(negative_lines).strip() if negative_lines is not None else None
    )
    # LoRA tags select networks; they are not text the encoder sees, so the prompt is kept without
    # them.
    record.loras = loras_in_prompt(record.prompt)
    record.prompt = strip_lora_tags(record.prompt)
    values = dict(settings)
    record.steps = as_int(values.pop("Steps", None))
    record.seed = as_int(values.pop("Seed", None))
    record.cfg_scale = as_float(values.pop("CFG scale", None))
    record.width, record.height = parse_size(values.pop("Size", None))
    record.model = values.pop("Model", None)
    record.model_hash = values.pop("Model hash", None)
    record.sampler = values.pop("Sampler", None)
    record.scheduler = values.pop("Schedule type", None)
    if record.sampler and record.scheduler is None:
        for suffix in _SCHEDULER_SUFFIXES:
            if record.sampler.endswith(" " + suffix):
                record.sampler, record.scheduler = record.sampler[: -len(suffix) - 1], suffix
                break
    version = values.pop("Version", None)
    record.generator_version = version
    if version and (version.startswith("f") or "forge" in version.lower()):
        record.generator = "Forge"
    if "Hashes" in values:
        try:
            values["Hashes"] = json.loads(values["Hashes"])
        except ValueError:
            record.warnings.append("A1111 settings: 'Hashes' is not valid JSON; kept as text")
    if record.model_hash is None and isinstance(values.get("Hashes"), dict):
        record.model_hash = values["Hashes"].get("model")
    record.extra = values
    if not settings:
        record.warnings.append("A1111 parameters without a settings line")
    return record
