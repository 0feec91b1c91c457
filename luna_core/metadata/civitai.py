"""Civitai's on-site generator: one JSON object in the JPEG's EXIF UserComment.

The object is a ComfyUI API graph (Civitai runs ComfyUI) whose node ids are not all numbers (its
loaders are `resource-stack`, `resource-stack-1`, ...), with models named as AIR URNs and text
encoded by custom nodes such as `smZ CLIPTextEncode` (whose `parser` input names the weighting
rules), plus `extraMetadata`: a *string* holding JSON with the prompt as typed, the settings and
the resources. AIR: Civitai's "AI Resource" identifiers (civitai.com/developer docs, "AIR"):
`urn:air:{ecosystem}:{type}:{source}:{id}@{version}`.
"""

from __future__ import annotations

import re
from typing import Any

from luna_core.metadata.comfyui import record_from_nodes
from luna_core.metadata.record import (
    GenerationRecord,
    MetadataError,
    as_float,
    as_int,
    as_str,
    load_json,
)

_AIR = re.compile(
    r"urn:air:(?P<ecosystem>[\w.-]+):(?P<type>[\w.-]+):(?P<source>[\w.-]+):"
    r"(?P<id>[^@\s]+)(?:@(?P<version>[^\s.]+))?(?:\.(?P<format>\w+))?"
)


def parse_air(text: str) -> dict[str, str | None] | None:
    """The parts of an AIR URN: ecosystem, type (checkpoint, lora, upscaler...), source, id,
    version."""
    match = _AIR.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    return {
        "ecosystem": match["ecosystem"],
        "type": match["type"],
        "source": match["source"],
        "model_id": match["id"],
        "version_id": match["version"],
    }


def _graph_nodes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        str(k): v
        for k, v in data.items()
        if isinstance(v, dict)
        and isinstance(v.get("class_type"), str)
        and isinstance(v.get("inputs"), dict)
    }


def is_civitai_generator(data: dict[str, Any]) -> bool:
    """An API graph with Civitai's marks: `extraMetadata`, or a loader named by an AIR URN."""
    nodes = _graph_nodes(data)
    if not nodes:
        return False
    if "extraMetadata" in data:
        return True
    return any(
        isinstance(v, str) and v.startswith("urn:air:")
        for n in nodes.values()
        for v in n["inputs"].values()
    )


def parse_civitai_generator(data: dict[str, Any]) -> GenerationRecord:
    record = record_from_nodes(_graph_nodes(data), GenerationRecord(generator="Civitai"))
    meta: dict[str, Any] = {}
    if isinstance(data.get("extraMetadata"), str):
        try:
            loaded = load_json(data["extraMetadata"], "Civitai extraMetadata")
            meta = loaded if isinstance(loaded, dict) else {}
        except MetadataError as exc:
            record.warnings.append(str(exc))
    elif isinstance(data.get("extraMetadata"), dict):
        meta = data["extraMetadata"]
    read_by = record.extra.setdefault("read_by", {})
    # The graph's encoder text is what was encoded; the typed prompt fills in only where the walk
    # found none.
    for field, key in (("prompt", "prompt"), ("negative_prompt", "negativePrompt")):
        typed = as_str(meta.get(key))
        if (
            getattr(record, field) is None
            and typed is not None
            and not record.extra.get("prompt_unknown")
        ):
            setattr(record, field, typed)
            read_by[field] = f"extraMetadata.{key}"
        elif typed is not None and typed != getattr(record, field):
            record.extra[f"typed_{field}"] = typed
    for field, key, convert in (
        ("seed", "seed", as_int),
        ("steps", "steps", as_int),
        ("cfg_scale", "cfgScale", as_float),
    ):
        if getattr(record, field) is None and convert(meta.get(key)) is not None:
            setattr(record, field, convert(meta.get(key)))
            read_by[field] = f"extraMetadata.{key}"
    if as_str(meta.get("sampler")):
        record.extra["sampler_name"] = meta[
            "sampler"
        ]  # Civitai's own name ("Euler a"); the graph's is ComfyUI's
        record.sampler = record.sampler or meta["sampler"]
    for key in ("workflowId", "resources"):
        if meta.get(key) is not None:
            record.extra[key] = meta[key]
    resources = [
        {"name": name, **air}
        for name in [record.model, *(lora.name for lora in record.loras)]
        if name and (air := parse_air(name)) is not None
    ]
    if resources:
        record.extra["air"] = resources
    if not read_by:
        record.extra.pop("read_by")
    return record
