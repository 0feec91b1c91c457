"""Generation metadata: from the items a container carries to one normalized record.

`parse_generation(items)` never raises on bad metadata: unreadable metadata yields a record whose
`warnings` say why, so the image is still catalogued and the reason is visible.
"""

from __future__ import annotations

from typing import Any

from luna_core.metadata.a1111 import parse_a1111
from luna_core.metadata.comfyui import parse_comfyui
from luna_core.metadata.invokeai import parse_dream, parse_invokeai_metadata, parse_sd_metadata
from luna_core.metadata.json_tools import (
    is_draw_things,
    is_easy_diffusion,
    is_fooocus,
    parse_draw_things,
    parse_easy_diffusion,
    parse_fooocus,
    parse_novelai,
    parse_swarmui,
)
from luna_core.metadata.record import GenerationRecord, Lora, MetadataError, load_json, looks_like_json_object

__all__ = ["GenerationRecord", "Lora", "parse_generation", "NO_METADATA", "UNKNOWN"]

NO_METADATA = "none"
UNKNOWN = "unknown"
# Container items that say nothing about how an image was generated.
_NEUTRAL_ITEMS = {"xmp", "exif:Software", "exif:Make", "exif:Model", "jpeg:comment", "Title", "Creation Time"}


def _json_object(text: str, what: str) -> dict[str, Any]:
    data = load_json(text, what)
    if not isinstance(data, dict):
        raise MetadataError(f"{what}: JSON is not an object")
    return data


def _from_json_record(data: dict[str, Any]) -> GenerationRecord | None:
    if isinstance(data.get("sui_image_params"), dict):
        return parse_swarmui(data)
    if is_fooocus(data):
        return parse_fooocus(data)
    if is_easy_diffusion(data):
        return parse_easy_diffusion(data)
    if is_draw_things(data):
        return parse_draw_things(data)
    return None


def _comfy_exif(items: dict[str, str]) -> tuple[str | None, str | None]:
    """ComfyUI's WebP/JPEG writers put 'prompt:{json}' and 'workflow:{json}' in IFD0 text tags."""
    prompt = workflow = None
    for key, value in items.items():
        if key.startswith("exif:") and isinstance(value, str):
            if value.startswith("prompt:") and prompt is None:
                prompt = value[len("prompt:") :]
            elif value.startswith("workflow:") and workflow is None:
                workflow = value[len("workflow:") :]
    return prompt, workflow


def _dispatch(items: dict[str, str]) -> GenerationRecord | None:
    if "invokeai_metadata" in items:
        return parse_invokeai_metadata(items["invokeai_metadata"])
    if "sd-metadata" in items:
        return parse_sd_metadata(items["sd-metadata"])
    if "Dream" in items:
        return parse_dream(items["Dream"])
    if items.get("Software", "").startswith("NovelAI") and looks_like_json_object(items.get("Comment")):
        return parse_novelai(_json_object(items["Comment"], "NovelAI Comment"), items.get("Description"), items.get("Source"))
    if "sui_image_params" in items:
        return parse_swarmui({"sui_image_params": _json_object(items["sui_image_params"], "SwarmUI")})
    parameters = items.get("parameters")
    if looks_like_json_object(parameters):
        record = _from_json_record(_json_object(parameters, "parameters"))
        if record is not None:
            return record
    elif parameters is not None and "fooocus_scheme" not in items:
        return _a1111(parameters)
    comfy_prompt, comfy_workflow = items.get("prompt"), items.get("workflow")
    if comfy_prompt is None and comfy_workflow is None:
        comfy_prompt, comfy_workflow = _comfy_exif(items)
    if comfy_prompt is not None and comfy_prompt.lstrip()[:1] in ("{", "[") and not is_easy_diffusion(items):
        return parse_comfyui(comfy_prompt, comfy_workflow)
    if comfy_prompt is None and looks_like_json_object(comfy_workflow):
        return parse_comfyui(None, comfy_workflow)
    if is_easy_diffusion(items):
        return parse_easy_diffusion(items)
    for key in ("Comment", "xmp:UserComment", "exif:UserComment"):
        text = items.get(key)
        if looks_like_json_object(text):
            record = _from_json_record(_json_object(text, key))
            if record is not None:
                return record
    user_comment = items.get("exif:UserComment")
    if user_comment and not looks_like_json_object(user_comment) and "Steps:" in user_comment:
        return _a1111(user_comment)
    return None


def _a1111(text: str) -> GenerationRecord:
    record = parse_a1111(text)
    if record.generator_version and record.generator_version.startswith("Fooocus"):
        record.generator = "Fooocus"
    return record


def parse_generation(items: dict[str, str]) -> GenerationRecord:
    """The generation record for an image's metadata items (from `containers.probe_image`)."""
    raw = {k: v for k, v in items.items()}
    try:
        record = _dispatch(items)
    except MetadataError as exc:
        record = GenerationRecord(generator=_guess_generator(items), warnings=[str(exc)])
    except (RecursionError, MemoryError):
        record = GenerationRecord(generator=_guess_generator(items), warnings=["metadata is too deeply nested to read"])
    if record is None:
        meaningful = set(items) - _NEUTRAL_ITEMS
        record = GenerationRecord(generator=UNKNOWN if meaningful else NO_METADATA)
    if record.negative_prompt is not None and not record.negative_prompt.strip():
        record.negative_prompt = None  # an empty negative is no negative: one spelling for both
    record.raw = raw
    return record


def _guess_generator(items: dict[str, str]) -> str:
    """Which tool most likely wrote metadata that did not parse (for counting and triage)."""
    if "invokeai_metadata" in items or "sd-metadata" in items or "Dream" in items:
        return "InvokeAI"
    if items.get("Software", "").startswith("NovelAI"):
        return "NovelAI"
    if "prompt" in items or "workflow" in items or any(str(v).startswith(("prompt:", "workflow:")) for v in items.values()):
        return "ComfyUI"
    if "sui_image_params" in items or "sui_image_params" in items.get("parameters", ""):
        return "SwarmUI"
    if "fooocus_scheme" in items:
        return "Fooocus"
    return UNKNOWN
