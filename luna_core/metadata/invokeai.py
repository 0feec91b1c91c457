"""InvokeAI: `invokeai_metadata` (v3+), `sd-metadata` (v2) and the legacy `Dream` command line."""

from __future__ import annotations

import re
import shlex
from typing import Any

from luna_core.metadata.record import (
    GenerationRecord,
    Lora,
    MetadataError,
    as_float,
    as_int,
    as_str,
    load_json,
)

_BRACKETED = re.compile(r"\[([^\[\]]*)\]")
MAX_DREAM_CHARS = 64 * 1024


def split_bracket_negative(prompt: str) -> tuple[str, str | None]:
    """InvokeAI 2 and Dream put the negative prompt in square brackets inside the prompt."""
    negatives = [part.strip() for part in _BRACKETED.findall(prompt) if part.strip()]
    positive = re.sub(r"\s{2,}", " ", _BRACKETED.sub("", prompt)).strip()
    return positive, (", ".join(negatives) if negatives else None)


def _model_name(model: Any) -> tuple[str | None, str | None]:
    if isinstance(model, dict):
        return as_str(model.get("name", model.get("model_name"))), as_str(model.get("hash"))
    return as_str(model), None


def parse_invokeai_metadata(text: str) -> GenerationRecord:
    data = load_json(text, "InvokeAI metadata")
    if not isinstance(data, dict):
        raise MetadataError("InvokeAI metadata is not a JSON object")
    record = GenerationRecord(generator="InvokeAI")
    record.prompt = as_str(data.get("positive_prompt"))
    record.negative_prompt = as_str(data.get("negative_prompt"))
    record.seed, record.steps = as_int(data.get("seed")), as_int(data.get("steps"))
    record.cfg_scale = as_float(data.get("cfg_scale"))
    record.scheduler = as_str(data.get("scheduler"))
    record.sampler = record.scheduler  # InvokeAI names the sampler by its scheduler
    record.width, record.height = as_int(data.get("width")), as_int(data.get("height"))
    record.model, record.model_hash = _model_name(data.get("model"))
    record.generator_version = as_str(data.get("app_version"))
    for entry in data.get("loras") or []:
        if isinstance(entry, dict):
            name, _ = _model_name(entry.get("model", entry.get("lora")))
            weight = as_float(entry.get("weight"))
            if name:
                record.loras.append(Lora(name, 1.0 if weight is None else weight))
    for key in ("positive_style_prompt", "negative_style_prompt", "generation_mode", "strength"):
        if data.get(key) is not None:
            record.extra[key] = data[key]
    return record


def parse_sd_metadata(text: str) -> GenerationRecord:
    data = load_json(text, "InvokeAI sd-metadata")
    if not isinstance(data, dict):
        raise MetadataError("InvokeAI sd-metadata is not a JSON object")
    image = data.get("image") if isinstance(data.get("image"), dict) else {}
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(str(p.get("prompt", "")) for p in prompt if isinstance(p, dict))
    record = GenerationRecord(generator="InvokeAI")
    if isinstance(prompt, str):
        record.prompt, record.negative_prompt = split_bracket_negative(prompt)
    record.seed, record.steps = as_int(image.get("seed")), as_int(image.get("steps"))
    record.cfg_scale = as_float(image.get("cfg_scale"))
    record.sampler = as_str(image.get("sampler"))
    record.width, record.height = as_int(image.get("width")), as_int(image.get("height"))
    record.model = as_str(data.get("model_weights"))
    record.model_hash = as_str(data.get("model_hash"))
    record.generator_version = as_str(data.get("app_version"))
    return record


def parse_dream(text: str) -> GenerationRecord:
    """'"a cat [blurry]" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms' (InvokeAI 1.x / lstein dream.py)."""
    if len(text) > MAX_DREAM_CHARS:
        raise MetadataError("InvokeAI Dream line is over the length bound")
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise MetadataError(f"InvokeAI Dream line does not parse ({exc})") from None
    record = GenerationRecord(generator="InvokeAI")
    options = {"-s": "steps", "-S": "seed", "-W": "width", "-H": "height", "-C": "cfg", "-A": "sampler"}
    values: dict[str, str] = {}
    prompt_words = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in options and i + 1 < len(words):
            values[options[word]] = words[i + 1]
            i += 2
            continue
        if word.startswith("-") and len(word) > 2 and word[:2] in options:
            values[options[word[:2]]] = word[2:]
        else:
            prompt_words.append(word)
        i += 1
    record.prompt, record.negative_prompt = split_bracket_negative(" ".join(prompt_words))
    record.steps, record.seed = as_int(values.get("steps")), as_int(values.get("seed"))
    record.width, record.height = as_int(values.get("width")), as_int(values.get("height"))
    record.cfg_scale, record.sampler = as_float(values.get("cfg")), values.get("sampler")
    record.generator_version = "1.x (Dream)"
    return record
