"""Generators that store a flat JSON (or key/value) record: NovelAI, Fooocus, SwarmUI,
Easy Diffusion and Draw Things. Each parser takes the decoded object and names its keys plainly."""

from __future__ import annotations

import re
from typing import Any

from luna_core.metadata.a1111 import loras_in_prompt
from luna_core.metadata.record import GenerationRecord, Lora, as_float, as_int, as_str, parse_size


def parse_novelai(
    comment: dict[str, Any], description: str | None, source: str | None
) -> GenerationRecord:
    record = GenerationRecord(generator="NovelAI")
    prompt = as_str(comment.get("prompt")) or description
    v4 = comment.get("v4_prompt")
    if not prompt and isinstance(v4, dict) and isinstance(v4.get("caption"), dict):
        prompt = as_str(v4["caption"].get("base_caption"))
    record.prompt = prompt
    record.negative_prompt = as_str(comment.get("uc"))
    record.seed, record.steps = as_int(comment.get("seed")), as_int(comment.get("steps"))
    record.cfg_scale = as_float(comment.get("scale"))
    record.sampler = as_str(comment.get("sampler"))
    record.scheduler = as_str(comment.get("noise_schedule"))
    record.width, record.height = as_int(comment.get("width")), as_int(comment.get("height"))
    record.model = source
    for key in ("uncond_scale", "cfg_rescale", "strength", "noise", "request_type"):
        if comment.get(key) is not None:
            record.extra[key] = comment[key]
    return record


def is_ruined_fooocus(data: dict[str, Any]) -> bool:
    return data.get("software") == "RuinedFooocus"


def parse_ruined_fooocus(data: dict[str, Any]) -> GenerationRecord:
    """RuinedFooocus: flat JSON in `parameters`; LoRAs as [hash, "weight - name"] pairs (or, in
    older versions, one "Loras:<name:weight>,..." string)."""
    record = GenerationRecord(generator="RuinedFooocus")
    record.prompt, record.negative_prompt = as_str(data.get("Prompt")), as_str(data.get("Negative"))
    record.seed, record.steps = as_int(data.get("seed")), as_int(data.get("steps"))
    record.cfg_scale = as_float(data.get("cfg"))
    record.width, record.height = as_int(data.get("width")), as_int(data.get("height"))
    record.sampler, record.scheduler = (
        as_str(data.get("sampler_name")),
        as_str(data.get("scheduler")),
    )
    record.model, record.model_hash = (
        as_str(data.get("base_model_name")),
        as_str(data.get("base_model_hash")),
    )
    loras = data.get("loras")
    if isinstance(loras, list):
        for pair in loras:
            if (
                isinstance(pair, list)
                and len(pair) == 2
                and isinstance(pair[1], str)
                and " - " in pair[1]
            ):
                weight, name = pair[1].split(" - ", 1)
                record.loras.append(Lora(name.strip(), as_float(weight.strip()) or 1.0))
    elif isinstance(loras, str):
        for name, weight in re.findall(r"<([^:<>]+):([-0-9.]+)>", loras):
            record.loras.append(Lora(name.strip(), as_float(weight) or 1.0))
    for key in ("start_step", "denoise", "clip_skip", "switch", "refiner_model_name"):
        if data.get(key) is not None:
            record.extra[key] = data[key]
    return record


def is_fooocus(data: dict[str, Any]) -> bool:
    version = str(data.get("version", ""))
    return (
        data.get("metadata_scheme") == "fooocus"
        or version.startswith("Fooocus")
        or ("base_model" in data and "guidance_scale" in data and "prompt" in data)
    )


# FooocusPlus's own scheme: Fooocus's record under capitalised keys, in a PNG `Comment` chunk
# (or EXIF UserComment), e.g. "Full Prompt", "Fooocus V2 Expansion", "Version": "FooocusPlus 1.0.x".
_FOOOCUS_PLUS_KEYS = {"Fooocus V2 Expansion": "prompt_expansion", "LoRAs": "fooocus_plus_loras"}


def is_fooocus_plus(data: dict[str, Any]) -> bool:
    return str(data.get("Version", "")).startswith("FooocusPlus") or (
        "Full Prompt" in data and "Base Model" in data
    )


def fooocus_plus_keys(data: dict[str, Any]) -> dict[str, Any]:
    """FooocusPlus's record with Fooocus's keys ("Negative Prompt" is negative_prompt)."""
    return {
        _FOOOCUS_PLUS_KEYS.get(key, key.lower().replace(" ", "_")): value
        for key, value in data.items()
    }


_FOOOCUS_LORA = re.compile(r"^(.*?)\s*:\s*(-?[\d.]+)\s*$")


def encoded_pieces(value: Any) -> str | None:
    """Fooocus encodes each text of `full_prompt` (the styled prompt, then its expansion) on its own
    and concatenates the conditionings along the sequence, pooled output from the first (Fooocus
    modules/default_pipeline.py clip_encode, async_worker.py `positive`/`negative` lists). In
    A1111's syntax that is the texts joined by BREAK: each starts a new chunk. None unless a list
    of texts."""
    if not isinstance(value, list) or not value or not all(isinstance(text, str) for text in value):
        return None
    texts = [text for text in value if text.strip()]
    return " BREAK ".join(texts) if texts else ""


def parse_fooocus(data: dict[str, Any]) -> GenerationRecord:
    """Fooocus (and forks that keep its scheme): the record its `metadata_scheme: fooocus` writes
    (Fooocus modules/meta_parser.py FooocusMetadataParser.to_json). The prompt stored is what was
    encoded (`full_prompt`); the typed prompt is kept as `typed_prompt`."""
    record = GenerationRecord(generator="Fooocus")
    typed, typed_negative = as_str(data.get("prompt")), as_str(data.get("negative_prompt"))
    record.prompt, record.negative_prompt = typed, typed_negative
    full, full_negative = (
        encoded_pieces(data.get("full_prompt")),
        encoded_pieces(data.get("full_negative_prompt")),
    )
    if full is not None:
        record.prompt = full
        record.extra["typed_prompt"] = typed
        record.extra["read_by"] = {"prompt": "full_prompt (each text encoded, joined by BREAK)"}
    if full_negative is not None:
        record.negative_prompt = full_negative
        if full_negative != typed_negative:
            record.extra["typed_negative_prompt"] = typed_negative
    record.seed, record.steps = as_int(data.get("seed")), as_int(data.get("steps"))
    record.cfg_scale = as_float(data.get("guidance_scale"))
    record.sampler, record.scheduler = as_str(data.get("sampler")), as_str(data.get("scheduler"))
    record.width, record.height = parse_size(data.get("resolution"))
    record.model, record.model_hash = (
        as_str(data.get("base_model")),
        as_str(data.get("base_model_hash")),
    )
    record.generator_version = as_str(data.get("version"))
    for key in sorted(k for k in data if k.startswith("lora_combined_")):
        match = _FOOOCUS_LORA.match(str(data[key]))
        if match:
            record.loras.append(Lora(match.group(1), float(match.group(2))))
    for key in (
        "styles",
        "performance",
        "prompt_expansion",
        "refiner_model",
        "sharpness",
        "adm_guidance",
    ):
        if data.get(key) is not None:
            record.extra[key] = data[key]
    return record


def parse_swarmui(data: dict[str, Any]) -> GenerationRecord:
    params = data.get("sui_image_params") if isinstance(data.get("sui_image_params"), dict) else {}
    record = GenerationRecord(generator="SwarmUI")
    record.prompt, record.negative_prompt = (
        as_str(params.get("prompt")),
        as_str(params.get("negativeprompt")),
    )
    record.seed, record.steps = as_int(params.get("seed")), as_int(params.get("steps"))
    record.cfg_scale = as_float(params.get("cfgscale"))
    record.sampler, record.scheduler = (
        as_str(params.get("sampler")),
        as_str(params.get("scheduler")),
    )
    record.width, record.height = as_int(params.get("width")), as_int(params.get("height"))
    record.model = as_str(params.get("model"))
    record.generator_version = as_str(params.get("swarm_version"))
    names, weights = params.get("loras") or [], params.get("loraweights") or []
    if isinstance(names, list):
        for i, name in enumerate(names):
            weight = (
                as_float(weights[i]) if isinstance(weights, list) and i < len(weights) else None
            )
            if as_str(name):
                record.loras.append(Lora(str(name), 1.0 if weight is None else weight))
    if isinstance(data.get("sui_extra_data"), dict):
        record.extra["sui_extra_data"] = data["sui_extra_data"]
    return record


def _normalized_keys(data: dict[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower().replace(" ", "_"): v for k, v in data.items()}


def is_easy_diffusion(data: dict[str, Any]) -> bool:
    keys = _normalized_keys(data)
    return (
        "use_stable_diffusion_model" in keys or "stable_diffusion_model" in keys
    ) and "prompt" in keys


def parse_easy_diffusion(data: dict[str, Any]) -> GenerationRecord:
    """Easy Diffusion writes either snake_case keys (older) or Title Case keys (v3)."""
    keys = _normalized_keys(data)

    def first(*names: str) -> Any:
        return next((keys[n] for n in names if keys.get(n) not in (None, "")), None)

    record = GenerationRecord(generator="Easy Diffusion")
    record.prompt = as_str(first("prompt"))
    record.negative_prompt = as_str(first("negative_prompt"))
    record.seed = as_int(first("seed"))
    record.steps = as_int(first("num_inference_steps", "steps"))
    record.cfg_scale = as_float(first("guidance_scale"))
    record.sampler = as_str(first("sampler_name", "sampler"))
    record.width, record.height = as_int(first("width")), as_int(first("height"))
    record.model = as_str(first("use_stable_diffusion_model", "stable_diffusion_model"))
    lora, alpha = first("use_lora_model", "lora_model"), first("lora_alpha", "lora_strength")
    lora_names = lora if isinstance(lora, list) else ([lora] if as_str(lora) else [])
    alphas = alpha if isinstance(alpha, list) else [alpha] * len(lora_names)
    for name, weight in zip(lora_names, alphas):
        value = as_float(weight)
        record.loras.append(Lora(str(name), 1.0 if value is None else value))
    for name in ("clip_skip", "use_vae_model", "vae_model", "use_face_correction", "use_upscale"):
        if keys.get(name) not in (None, ""):
            record.extra[name] = keys[name]
    return record


def is_draw_things(data: dict[str, Any]) -> bool:
    return "c" in data and ("sampler" in data or "scale" in data or "seed" in data)


def parse_draw_things(data: dict[str, Any]) -> GenerationRecord:
    record = GenerationRecord(generator="Draw Things")
    record.prompt, record.negative_prompt = as_str(data.get("c")), as_str(data.get("uc"))
    record.seed, record.steps = as_int(data.get("seed")), as_int(data.get("steps"))
    record.cfg_scale = as_float(data.get("scale"))
    record.sampler = as_str(data.get("sampler"))
    record.width, record.height = parse_size(data.get("size"))
    record.model = as_str(data.get("model"))
    for entry in data.get("lora") or []:
        if isinstance(entry, dict) and as_str(entry.get("file")):
            weight = as_float(entry.get("weight"))
            record.loras.append(Lora(str(entry["file"]), 1.0 if weight is None else weight))
    if not record.loras:
        record.loras = loras_in_prompt(record.prompt)
    if data.get("strength") is not None:
        record.extra["strength"] = data["strength"]
    return record


# Gradio apps (Hugging Face Spaces, self-hosted diffusers UIs) write a JSON object into the PNG
# `parameters` chunk (gr.Image with PngInfo; the keys are the app's: diffusers' call arguments and
# A1111-like names).
_GRADIO_KEYS = (
    "guidance_scale",
    "num_inference_steps",
    "resolution",
    "Model",
    "Model hash",
    "negative_prompt",
)


def is_gradio(data: dict[str, Any]) -> bool:
    return isinstance(data.get("prompt"), str) and any(key in data for key in _GRADIO_KEYS)


def parse_json_parameters(data: dict[str, Any]) -> GenerationRecord:
    """A JSON `parameters` object of a Gradio app, or of an app with other keys: the keys it shares
    with the others. Never read as A1111 text; the whole object stays in the raw metadata."""
    record = GenerationRecord(generator="Gradio" if is_gradio(data) else "unknown")
    record.prompt = as_str(data.get("prompt"))
    record.negative_prompt = as_str(data.get("negative_prompt", data.get("negativePrompt")))
    record.seed = as_int(data.get("seed"))
    record.steps = as_int(data.get("num_inference_steps", data.get("steps")))
    record.cfg_scale = as_float(data.get("guidance_scale", data.get("cfg_scale")))
    record.sampler = as_str(data.get("sampler", data.get("scheduler")))
    record.width, record.height = parse_size(data.get("resolution"))
    if record.width is None:
        record.width, record.height = as_int(data.get("width")), as_int(data.get("height"))
    record.model = as_str(data.get("Model", data.get("model")))
    record.model_hash = as_str(data.get("Model hash", data.get("model_hash")))
    return record
