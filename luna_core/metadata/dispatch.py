"""Generation metadata: from the items a container carries to one normalized record.

`parse_generation(items)` never raises on bad metadata: unreadable metadata yields a record whose
`warnings` say why, so the image is still catalogued and the reason is visible.
"""

from __future__ import annotations

import json
from typing import Any

from luna_core.metadata.a1111 import parse_a1111
from luna_core.metadata.civitai import is_civitai_generator, parse_civitai_generator
from luna_core.metadata.comfyui import parse_comfyui
from luna_core.metadata.invokeai import (
    parse_dream,
    parse_invokeai_metadata,
    parse_legacy_invokeai,
)
from luna_core.metadata.json_tools import (
    fooocus_plus_keys,
    is_draw_things,
    is_easy_diffusion,
    is_fooocus,
    is_fooocus_plus,
    is_ruined_fooocus,
    parse_draw_things,
    parse_easy_diffusion,
    parse_fooocus,
    parse_json_parameters,
    parse_novelai,
    parse_ruined_fooocus,
    parse_swarmui,
)
from luna_core.metadata.record import (
    SETTING_FIELDS,
    GenerationRecord,
    Lora,
    MetadataError,
    as_float,
    as_str,
    load_json,
    looks_like_json_object,
)

__all__ = ["GenerationRecord", "Lora", "parse_generation", "NO_METADATA", "UNKNOWN"]

NO_METADATA = "none"
UNKNOWN = "unknown"
# Container items that say nothing about how an image was generated.
_NEUTRAL_ITEMS = {
    "xmp",
    "exif:Software",
    "exif:Make",
    "exif:Model",
    "jpeg:comment",
    "Title",
    "Creation Time",
}


def _json_object(text: str, what: str) -> dict[str, Any]:
    data = load_json(text, what)
    if not isinstance(data, dict):
        raise MetadataError(f"{what}: JSON is not an object")
    return data


def _from_json_record(data: dict[str, Any]) -> GenerationRecord | None:
    if is_civitai_generator(data):
        return parse_civitai_generator(data)
    if isinstance(data.get("sui_image_params"), dict):
        return parse_swarmui(data)
    if is_ruined_fooocus(data):
        return parse_ruined_fooocus(data)
    if is_fooocus(data):
        return parse_fooocus(data)
    if is_fooocus_plus(data):
        record = parse_fooocus(fooocus_plus_keys(data))
        record.generator = "FooocusPlus"
        return record
    if is_easy_diffusion(data):
        return parse_easy_diffusion(data)
    if is_draw_things(data):
        return parse_draw_things(data)
    return None


_COMFY_PREFIXES = ("prompt:", "workflow:")


def _comfy_graphs(items: dict[str, str]) -> tuple[str | None, str | None, str]:
    """ComfyUI's API graph and editor graph wherever a writer put them, and where they were found:
    PNG `prompt`/`workflow` text; 'prompt:{json}' / 'workflow:{json}' in EXIF text tags (ComfyUI's
    WebP saver, Save Image Extended); or one JSON object {"prompt": ..., "workflow": ...} in the
    EXIF UserComment (extended-format savers)."""
    if "prompt" in items or "workflow" in items:
        source = "comfy:prompt" if items.get("prompt") is not None else "comfy:workflow"
        return items.get("prompt"), items.get("workflow"), source
    prompt = workflow = None
    where = ""
    for key, value in items.items():
        if not (key.startswith("exif:") and isinstance(value, str)):
            continue
        head = value[:9].lower()
        if head.startswith("prompt:") and prompt is None:
            prompt, where = value[len("prompt:") :], key
        elif head.startswith("workflow:") and workflow is None:
            workflow = value[len("workflow:") :]
            where = where or key
    if (
        prompt is None
        and workflow is None
        and looks_like_json_object(items.get("exif:UserComment"))
    ):
        try:
            data = _json_object(items["exif:UserComment"], "EXIF UserComment")
        except MetadataError:
            return None, None, ""
        if isinstance(data.get("prompt"), (dict, str)) or isinstance(data.get("workflow"), dict):
            dump = lambda v: v if isinstance(v, str) or v is None else json.dumps(v)  # noqa: E731
            return dump(data.get("prompt")), dump(data.get("workflow")), "exif:UserComment"
    return prompt, workflow, where


def _tagged(record: GenerationRecord | None, source: str) -> GenerationRecord | None:
    if record is not None:
        record.source = source
    return record


def _graph_record(items: dict[str, str]) -> GenerationRecord | None:
    prompt, workflow, where = _comfy_graphs(items)
    if prompt is not None and prompt.lstrip()[:1] in ("{", "[") and not is_easy_diffusion(items):
        record = parse_comfyui(prompt, workflow)
        return _tagged(record, where if where.startswith("exif") else "comfy:prompt")
    if prompt is None and looks_like_json_object(workflow):
        return _tagged(
            parse_comfyui(None, workflow),
            "comfy:workflow" if not where.startswith("exif") else where,
        )
    return None


def _with_saver_text(graph: GenerationRecord, text: GenerationRecord) -> GenerationRecord:
    """A ComfyUI save node's A1111-style text beside the graph: the graph is what ran; the text
    fills what the graph does not say (model hash, LoRAs written as tags, a prompt the walk
    missed)."""
    for name in (*SETTING_FIELDS, "model", "model_hash"):
        ours, theirs = getattr(graph, name), getattr(text, name)
        # A prompt the walk found only part of (a node it cannot evaluate joined more text on):
        # the saver wrote the whole text the encoder got
        fuller = (
            name.endswith("prompt")
            # Stability Matrix writes the typed prompt, comments and all; its graph's is encoded
            and text.generator != "Stability Matrix"
            and isinstance(ours, str)
            and isinstance(theirs, str)
            and ours.strip()
            and ours.strip() in theirs
            and len(theirs.strip()) > len(ours.strip())
        )
        if (ours is None and theirs is not None) or fuller:
            setattr(graph, name, theirs)
            if name.endswith("prompt"):  # the saver wrote the text the graph evaluated at run time
                graph.extra.setdefault("read_by", {})[name] = (
                    "png:parameters (the save node's evaluated text)"
                )
    if not graph.loras:
        graph.loras = text.loras
    if text.generator == "Stability Matrix":  # a ComfyUI backend behind its own front end
        graph.generator = text.generator
    graph.extra["saver_parameters"] = {
        k: v for k, v in text.extra.items() if isinstance(v, (str, int, float, dict))
    }
    return graph


def _novelai_json(data: dict[str, Any]) -> GenerationRecord | None:
    """NovelAI's text chunks as one JSON object (its WebP EXIF, its stealth alpha payload)."""
    if str(data.get("Software", "")).startswith("NovelAI") and looks_like_json_object(
        data.get("Comment")
    ):
        return parse_novelai(
            _json_object(data["Comment"], "NovelAI Comment"),
            data.get("Description"),
            data.get("Source"),
        )
    return None


def _text_record(text: str, where: str) -> GenerationRecord | None:
    """Generation metadata in one free text item: a JSON record of a known tool, or A1111 text."""
    if looks_like_json_object(text):
        data = _json_object(text, where)
        return _tagged(_novelai_json(data) or _from_json_record(data), where)
    if "Steps:" in text:
        return _tagged(_a1111(text), where)
    return None


def _typed_prompt(record: GenerationRecord, items: dict[str, str]) -> GenerationRecord:
    """Stability Matrix's `parameters-json` twin holds the prompt as written (with its `#` comments,
    which it strips before sending the text to ComfyUI): kept as the typed prompt, never as the
    encoded one."""
    try:
        data = _json_object(items["parameters-json"], "Stability Matrix parameters-json")
    except MetadataError as exc:
        record.warnings.append(str(exc))
        return record
    for field, key, encoded in (
        ("typed_prompt", "PositivePrompt", record.prompt),
        ("typed_negative_prompt", "NegativePrompt", record.negative_prompt),
    ):
        if isinstance(data.get(key), str) and data[key] != encoded:
            record.extra[field] = data[key]
    return record


def _dispatch(items: dict[str, str]) -> GenerationRecord | None:
    if "invokeai_metadata" in items:
        return _tagged(parse_invokeai_metadata(items["invokeai_metadata"]), "png:invokeai_metadata")
    if "sd-metadata" in items:
        return parse_legacy_invokeai(items)
    if "Dream" in items:
        return _tagged(parse_dream(items["Dream"]), "png:Dream")
    if items.get("Software", "").startswith("NovelAI") and looks_like_json_object(
        items.get("Comment")
    ):
        return _tagged(_novelai_json(items), "png:Comment")
    if "sui_image_params" in items:
        return _tagged(
            parse_swarmui({"sui_image_params": _json_object(items["sui_image_params"], "SwarmUI")}),
            "png:sui_image_params",
        )
    parameters = items.get("parameters")
    graph = _graph_record(items)
    if looks_like_json_object(parameters):
        data = _json_object(parameters, "parameters")
        record = _from_json_record(data)
        if record is None and graph is None:
            # a Gradio app's, or another app's JSON: never A1111 text
            record = parse_json_parameters(data)
        if record is not None:
            return _tagged(record, "png:parameters")
    elif parameters is not None and "fooocus_scheme" not in items:
        text = _a1111(parameters, items)
        if graph is not None and (graph.prompt is not None or graph.extra.get("prompt_unknown")):
            graph = _with_saver_text(graph, text)
            return _typed_prompt(graph, items) if "parameters-json" in items else graph
        return _tagged(text, "png:parameters")
    if graph is not None:
        return graph
    if is_easy_diffusion(items):
        return _tagged(parse_easy_diffusion(items), "png:text")
    for key in (
        "Comment",
        "xmp:UserComment",
        "exif:UserComment",
        "xmp:description",
        "exif:ImageDescription",
        "jpeg:comment",
        "stealth:alpha",
    ):
        text = items.get(key)
        if text:
            where = {
                "jpeg:comment": "jpeg:COM",
                "stealth:alpha": "alpha:stealth",
                "Comment": "png:Comment",
            }.get(key, key)
            record = _text_record(text, where)
            if record is not None:
                return record
    return None


def _a1111(text: str, items: dict[str, str] | None = None) -> GenerationRecord:
    """A1111-style text, told apart by what the writer adds: `Version: ComfyUI` (Comfy Image Saver),
    `Version: Fooocus...`, `App: SD.Next`, Civitai's resource list, Stability Matrix's own
    chunks."""
    record = parse_a1111(text)
    version = record.generator_version or ""
    if version.startswith("Fooocus"):
        record.generator = "Fooocus"
    elif version == "ComfyUI":
        record.generator = "ComfyUI"
    elif "Civitai resources" in record.extra or "Civitai metadata" in record.extra:
        record.generator = "Civitai"
    elif str(record.extra.get("App", "")).startswith("SD.Next"):
        record.generator = "SD.Next"
    elif items and ("smproj" in items or "parameters-json" in items):
        record.generator = "Stability Matrix"
    _civitai_resources(record)
    return record


def _civitai_resources(record: GenerationRecord) -> None:
    """Civitai's resource list names the checkpoint and the LoRAs (with weights) the text leaves
    out."""
    resources = record.extra.get("Civitai resources")
    if isinstance(resources, str):
        try:
            resources = json.loads(resources)
        except ValueError:
            record.warnings.append("Civitai resources: not valid JSON; kept as text")
            return
        record.extra["Civitai resources"] = resources
    if not isinstance(resources, list):
        return
    named = {lora.name for lora in record.loras}
    for resource in resources:
        if not isinstance(resource, dict):
            continue
        kind, name = str(resource.get("type", "")).lower(), as_str(resource.get("modelName"))
        if kind == "checkpoint" and name and record.model is None:
            record.model = name
        elif kind in ("lora", "lycoris", "locon") and name and name not in named:
            weight = as_float(resource.get("weight"))
            record.loras.append(Lora(name, 1.0 if weight is None else weight))


def parse_generation(items: dict[str, str]) -> GenerationRecord:
    """The generation record for an image's metadata items (from `containers.probe_image`)."""
    raw = {k: v for k, v in items.items()}
    try:
        record = _dispatch(items)
    except MetadataError as exc:
        record = GenerationRecord(generator=_guess_generator(items), warnings=[str(exc)])
    except (RecursionError, MemoryError):
        record = GenerationRecord(
            generator=_guess_generator(items), warnings=["metadata is too deeply nested to read"]
        )
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
    if (
        "prompt" in items
        or "workflow" in items
        or any(str(v).startswith(("prompt:", "workflow:")) for v in items.values())
    ):
        return "ComfyUI"
    if "sui_image_params" in items or "sui_image_params" in items.get("parameters", ""):
        return "SwarmUI"
    if "fooocus_scheme" in items:
        return "Fooocus"
    return UNKNOWN
