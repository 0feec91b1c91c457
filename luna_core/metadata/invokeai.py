"""InvokeAI: `invokeai_metadata` (v3+), `sd-metadata` (v2) and the legacy `Dream` command line."""

from __future__ import annotations

import re
import shlex
from typing import Any

from luna_core.metadata.record import (
    SETTING_FIELDS,
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
    """InvokeAI 1.x-2.x put the negative prompt in square brackets inside the prompt
    (ldm/invoke/conditioning.py split_prompt_to_positive_and_negative): the positive is the rest,
    spaces left by a span closed up."""
    if not _BRACKETED.search(prompt):
        return prompt, None
    negatives = [part.strip() for part in _BRACKETED.findall(prompt) if part.strip()]
    positive = re.sub(
        r" ?\[[^\[\]]*\] ?",
        lambda m: " " if m.group(0).startswith(" ") and m.group(0).endswith(" ") else "",
        prompt,
    ).strip()
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


def _sd_metadata_image(data: dict[str, Any]) -> dict[str, Any]:
    """InvokeAI 2.x writes `image` (one dict); 1.x-era files `images` (a list, the first is the
    image)."""
    if isinstance(data.get("image"), dict):
        return data["image"]
    images = data.get("images")
    if isinstance(images, list) and images and isinstance(images[0], dict):
        return images[0]
    return {}


def parse_sd_metadata(text: str) -> GenerationRecord:
    """InvokeAI 1.x-2.x `sd-metadata` (ldm/invoke/pngwriter.py, args.py metadata_dumps): settings at
    the top (`model_weights` or `model_id`, `model_hash`, `app_version`), the generation under
    `image`/`images[]`, its prompt a list of {prompt, weight} pieces, a `[bracketed span]` inside
    being the negative."""
    data = load_json(text, "InvokeAI sd-metadata")
    if not isinstance(data, dict):
        raise MetadataError("InvokeAI sd-metadata is not a JSON object")
    image = _sd_metadata_image(data)
    record = GenerationRecord(generator="InvokeAI")
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        pieces = [
            (as_str(p.get("prompt")), as_float(p.get("weight")))
            for p in prompt
            if isinstance(p, dict)
        ]
        pieces = [
            (text, 1.0 if weight is None else weight) for text, weight in pieces if text is not None
        ]
        if len(pieces) == 1:
            prompt = pieces[0][0]
        else:  # a weighted blend (`a cat:0.5 a dog:0.5`): several encodings mixed, not one text
            record.extra["prompt_pieces"] = [{"prompt": t, "weight": w} for t, w in pieces]
            if pieces:
                record.warnings.append(
                    f"InvokeAI prompt is a weighted blend of {len(pieces)} prompts; "
                    "kept as prompt_pieces, not stored as one text"
                )
            prompt = None
    if isinstance(prompt, str):
        record.prompt, record.negative_prompt = split_bracket_negative(prompt)
    record.seed, record.steps = as_int(image.get("seed")), as_int(image.get("steps"))
    record.cfg_scale = as_float(image.get("cfg_scale"))
    record.sampler = as_str(image.get("sampler"))
    record.width, record.height = as_int(image.get("width")), as_int(image.get("height"))
    record.model = as_str(data.get("model_weights")) or as_str(data.get("model_id"))
    record.model_hash = as_str(data.get("model_hash"))
    record.generator_version = as_str(data.get("app_version"))
    if image.get("variations"):
        record.extra["variations"] = image["variations"]
    return record


# InvokeAI 2.x ldm/invoke/args.py Args.dream_prompt_str(): the prompt in double quotes (its own
# quotes left as they are), then switches, each with its values: -s steps, -S seed, -W/-H size, -C
# cfg, -A sampler, and as used -I init image, -f strength, -M mask, -G/-ft/-cf face restoration, -U
# upscale (one or two values), -v variation amount, -V variations, -c outcrop, --seamless,
# --hires_fix, --embiggen ... Early dream.py log lines leave the prompt unquoted and may glue a
# value to its switch (-s50).
_DREAM_SETTINGS = {
    "-s": "steps",
    "--steps": "steps",
    "-S": "seed",
    "--seed": "seed",
    "-W": "width",
    "--width": "width",
    "-H": "height",
    "--height": "height",
    "-C": "cfg",
    "--cfg_scale": "cfg",
    "-A": "sampler",
    "--sampler": "sampler",
}
_DREAM_KNOWN = set(_DREAM_SETTINGS) | {
    "-I",
    "-f",
    "-M",
    "-G",
    "-ft",
    "-cf",
    "-U",
    "-v",
    "-V",
    "-c",
    "-n",
    "-b",
    "-g",
    "-t",
    "-F",
    "-x",
    "-tm",
    "--seamless",
    "--hires_fix",
    "--grid",
    "--fit",
    "--perlin",
    "--threshold",
    "--embiggen",
    "--embiggen_tiles",
    "--embiggen_strength",
    "--karras_max",
    "--init_color",
    "--inpaint_replace",
    "--facetool",
    "--variation_amount",
    "--with_variations",
    "--upscale",
    "--strength",
    "--outcrop",
    "--init_img",
    "--init_mask",
    "--text_mask",
}
# How many values a switch takes (low, high); the rest take one. A word left over after its switch's
# values is not a Dream line's: that is how prompt text that merely looks like a switch (` -style`)
# is told apart.
_ARITY = {
    "--seamless": (0, 0),
    "--hires_fix": (0, 0),
    "--grid": (0, 0),
    "--fit": (0, 0),
    "-F": (0, 0),
    "-t": (0, 0),
    "--inpaint_replace": (0, 1),
    "-U": (1, 2),
    "--upscale": (1, 2),
    "-c": (1, 8),
    "--outcrop": (1, 8),
    "-tm": (1, 3),
    "--text_mask": (1, 3),
    "--embiggen": (1, 3),
    "--embiggen_tiles": (1, 64),
}
_SWITCH = re.compile(r"--?[A-Za-z][\w-]*")
_GLUED = re.compile(r"(-[sSWHC])(\d[\d.]*)")  # -s50, -S42, -C7.5
_NUMBER = re.compile(r"-?\d[\d.,:;]*")
_CLOSING_TRIES = 64  # candidate closing quotes tried before a Dream line is called unreadable


def _switches(text: str) -> list[tuple[str, list[str]]] | None:
    """`-s 50 -U 4 0.95 --seamless` as (switch, values); None unless every word is a switch or a
    value that follows one and the first word is a switch Dream writes."""
    try:  # shlex only where a value is quoted (-I "a path"): it costs ten times a split
        words = shlex.split(text) if '"' in text or "'" in text else text.split()
    except ValueError:
        return None
    found: list[tuple[str, list[str]]] = []
    for word in words:
        glued = _GLUED.fullmatch(word)
        if glued:
            found.append((glued.group(1), [glued.group(2)]))
        elif _SWITCH.fullmatch(word) and not _NUMBER.fullmatch(word):
            found.append((word, []))
        elif found and len(found[-1][1]) < _ARITY.get(found[-1][0], (1, 1))[1]:
            found[-1][1].append(word)
        else:
            return None
    if not found or found[0][0] not in _DREAM_KNOWN:
        return None
    if any(len(values) < _ARITY.get(switch, (0, 1))[0] for switch, values in found):
        return None
    return found


def split_dream(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """(prompt, switches) of a Dream line; MetadataError when no reading is sure."""
    line = text.strip()
    if line.startswith('"'):
        tries = 0
        for match in re.finditer(r'"(?=\s+-|\s*$)', line[1:]):
            end = match.start() + 1
            rest = line[end + 1 :]
            if not rest.strip():
                return line[1:end], []
            switches = _switches(rest)
            if switches is not None:
                return line[1:end], switches
            tries += 1
            if tries == _CLOSING_TRIES:
                break
        raise MetadataError("InvokeAI Dream line: no closing quote is followed by Dream's switches")
    words = line.split(" ")
    # unquoted: the prompt runs to the first of Dream's own switches
    for i, word in enumerate(words):
        if word in _DREAM_KNOWN or _GLUED.fullmatch(word):
            switches = _switches(" ".join(words[i:]))
            if switches is not None:
                return " ".join(words[:i]).strip(), switches
    raise MetadataError("InvokeAI Dream line has none of Dream's switches")


def _variations(value: str) -> list[list[float]] | None:
    """-V as 2.x writes it (`seed:weight,seed:weight`) or as 1.x did (`seed,weight;seed,weight`)."""
    pairs = value.split(";") if ";" in value else value.split(",")
    out = []
    for pair in pairs:
        seed, _, weight = pair.partition(":" if ";" not in value else ",")
        if as_int(seed) is None or as_float(weight) is None:
            return None
        out.append([as_int(seed), as_float(weight)])
    return out


def parse_dream(text: str) -> GenerationRecord:
    """'"a cat [blurry]" -s 50 -S 42 -W 512 -H 512 -C 7.5 -A k_lms -G 0.9 -U 4 0.95' (InvokeAI
    1.x-2.x)."""
    if len(text) > MAX_DREAM_CHARS:
        raise MetadataError("InvokeAI Dream line is over the length bound")
    prompt, switches = split_dream(text)
    record = GenerationRecord(generator="InvokeAI")
    values: dict[str, str] = {}
    others: dict[str, Any] = {}
    for switch, args in switches:
        if switch in _DREAM_SETTINGS and not args:
            record.warnings.append(f"InvokeAI Dream switch {switch} has no value")
        elif switch in _DREAM_SETTINGS:
            values[_DREAM_SETTINGS[switch]] = args[0]
        elif switch in ("-V", "--with_variations") and args:
            variations = _variations(args[0])
            if variations is None:
                record.warnings.append(
                    f"InvokeAI Dream -V {args[0]!r}: not a list of seed and weight; kept as text"
                )
            others["variations"] = variations if variations is not None else args[0]
        else:
            others[switch] = args[0] if len(args) == 1 else (args or True)
    record.prompt, record.negative_prompt = split_bracket_negative(prompt)
    record.steps, record.seed = as_int(values.get("steps")), as_int(values.get("seed"))
    record.width, record.height = as_int(values.get("width")), as_int(values.get("height"))
    record.cfg_scale, record.sampler = as_float(values.get("cfg")), values.get("sampler")
    if others:
        record.extra["dream_switches"] = others
    record.generator_version = "1.x-2.x (Dream)"
    return record


def parse_legacy_invokeai(items: dict[str, str]) -> GenerationRecord:
    """InvokeAI 1.x-2.x: `sd-metadata` JSON, the `Dream` command line, or both (what one lacks, the
    other gives; a disagreement on the prompt is recorded, the JSON kept)."""
    record = parse_sd_metadata(items["sd-metadata"])
    record.source = "png:sd-metadata"
    if "Dream" not in items:
        return record
    try:
        dream = parse_dream(items["Dream"])
    except MetadataError as exc:
        record.warnings.append(str(exc))
        return record
    read_by = {}
    for name in SETTING_FIELDS:  # Dream has no scheduler: it stays the record's
        if (
            getattr(record, name) is None
            and getattr(dream, name) is not None
            and not (name.endswith("prompt") and record.extra.get("prompt_pieces"))
        ):
            setattr(record, name, getattr(dream, name))
            read_by[name] = "png:Dream"
    if dream.prompt is not None and record.prompt is not None and dream.prompt != record.prompt:
        record.warnings.append(
            "InvokeAI sd-metadata and Dream disagree on the prompt; sd-metadata's is kept"
        )
    if read_by:
        record.extra["read_by"] = read_by
    record.extra.update({k: v for k, v in dream.extra.items() if k not in record.extra})
    return record
