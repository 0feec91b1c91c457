"""ComfyUI's editor graph (`workflow`: {nodes, links}) as an API graph ({node_id: {class_type,
inputs}}), for graphs saved without the executed `prompt`: widget values are named by the known
layouts of the common nodes, and links are followed through Reroute joints (bounded: graphs are
untrusted)."""

from __future__ import annotations

from typing import Any

from luna_core.metadata.record import MetadataError

MAX_DEPTH = 64  # links followed from one node at most (the graph walk's bound too)


# Widget layouts of the common nodes, for graphs saved only as the editor `workflow`.
UI_WIDGETS = {
    "CLIPTextEncode": ["text"],
    "CLIPTextEncodeSDXL": [
        "width",
        "height",
        "crop_w",
        "crop_h",
        "target_width",
        "target_height",
        "text_g",
        "text_l",
    ],
    "CLIPTextEncodeSDXLRefiner": ["ascore", "width", "height", "text"],
    "KSampler": [
        "seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
    ],
    "KSamplerAdvanced": [
        "add_noise",
        "noise_seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "start_at_step",
        "end_at_step",
        "return_with_leftover_noise",
    ],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "UNETLoader": ["unet_name", "weight_dtype"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "LoraLoaderModelOnly": ["lora_name", "strength_model"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "EmptySD3LatentImage": ["width", "height", "batch_size"],
    "RandomNoise": ["noise_seed", "control_after_generate"],
    "KSamplerSelect": ["sampler_name"],
    "BasicScheduler": ["scheduler", "steps", "denoise"],
    "CFGGuider": ["cfg"],
    "PrimitiveNode": ["value"],
    "PrimitiveString": ["value"],
    "PrimitiveStringMultiline": ["value"],
}
SEED_WIDGETS = ("seed", "noise_seed")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")


def widget_names(node: dict[str, Any]) -> list[str]:
    """Widget names of an editor node: the known layout, else the names newer frontends list on the
    node's inputs (`{"name": ..., "widget": {"name": ...}}`), a seed followed by its control
    widget."""
    layout = UI_WIDGETS.get(str(node.get("type")))
    if layout is not None:
        return layout
    names = []
    for slot in node.get("inputs") or []:
        if (
            isinstance(slot, dict)
            and isinstance(slot.get("widget"), dict)
            and slot["widget"].get("name")
        ):
            names.append(str(slot["widget"]["name"]))
            if names[-1] in SEED_WIDGETS:
                names.append("control_after_generate")
    return names


def workflow_to_api(workflow: dict[str, Any], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """An editor graph as an API graph, for the node types whose widget layout is known."""
    nodes = workflow.get("nodes")
    links = workflow.get("links")
    if not isinstance(nodes, list) or not isinstance(links, list):
        raise MetadataError("ComfyUI workflow has no 'nodes'/'links' lists")
    by_id = {node.get("id"): node for node in nodes if isinstance(node, dict)}
    link_source: dict[int, list[Any]] = {}
    for link in links:
        if isinstance(link, list) and len(link) >= 4:
            link_source[link[0]] = [link[1], link[2]]
        elif isinstance(link, dict) and "id" in link:
            link_source[link["id"]] = [link.get("origin_id"), link.get("origin_slot", 0)]

    def source_of(link_id: Any) -> list[Any] | None:
        """Where a link starts, through Reroute nodes (the editor's wire joints, absent from API
        graphs)."""
        for _ in range(MAX_DEPTH):
            origin = link_source.get(link_id)
            if origin is None:
                return None
            node = by_id.get(origin[0])
            if not (isinstance(node, dict) and node.get("type") == "Reroute"):
                return [str(origin[0]), origin[1]]
            slots = [
                s
                for s in node.get("inputs") or []
                if isinstance(s, dict) and s.get("link") is not None
            ]
            if not slots:
                return None
            link_id = slots[0]["link"]
        return None

    api: dict[str, dict[str, Any]] = {}
    for node in nodes:
        if not isinstance(node, dict) or "id" not in node or node.get("type") == "Reroute":
            continue
        inputs: dict[str, Any] = {}
        widgets = node.get("widgets_values")
        if isinstance(widgets, list):
            names = widget_names(node)
            if (
                names
                and names[-1:] != ["control_after_generate"]
                and len(widgets) == len(names) + 1
                and widgets[-1] in CONTROL_VALUES
            ):
                names = names + ["control_after_generate"]
            inputs.update({name: value for name, value in zip(names, widgets)})
        for slot in node.get("inputs") or []:
            if isinstance(slot, dict) and slot.get("link") is not None:
                origin = source_of(slot["link"])
                if origin is not None:
                    inputs[str(slot.get("name"))] = origin
        api[str(node["id"])] = {"class_type": node.get("type"), "inputs": inputs}
    if not any(n["class_type"] in UI_WIDGETS or n["inputs"] for n in api.values()):
        warnings.append("ComfyUI workflow holds no node type Luna can read without the API graph")
    return api
