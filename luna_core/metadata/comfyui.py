"""ComfyUI graphs: find every sampler and walk its conditioning back to the text encoders.

ComfyUI saves the executed API graph (`prompt`: {node_id: {class_type, inputs}}) and the editor
graph (`workflow`: {nodes, links}). Links are `[node_id, output_slot]`. Graphs are untrusted: the
walk keeps a visited set (graphs with cycles end) and bounds its depth and work.
"""

from __future__ import annotations

import re
from typing import Any

from luna_core.metadata.comfyui_graph import ApiGraph
from luna_core.metadata.comfyui_nodes import (
    _SAMPLER_HINTS,
    _is_link,
)
from luna_core.metadata.comfyui_workflow import workflow_to_api
from luna_core.metadata.record import (
    GenerationRecord,
    MetadataError,
    as_float,
    as_int,
    as_str,
    load_json,
)
from luna_core.prompts.syntax import comfy_rules_by_version


def _sampler_nodes(graph: ApiGraph) -> list[tuple[str, dict[str, Any], Any, Any]]:
    """(node id, node, positive link, negative link) for every sampler, custom ones included."""
    found = []
    for node_id, node in graph.nodes.items():
        inputs = node.get("inputs", {})
        class_type = str(node.get("class_type", ""))
        positive, negative = inputs.get("positive"), inputs.get("negative")
        if _is_link(positive) and _is_link(negative):
            is_sampler = "sampler" in class_type.lower() or any(h in inputs for h in _SAMPLER_HINTS)
            if is_sampler and "guider" not in class_type.lower():
                found.append((node_id, node, positive, negative))
        elif _is_link(inputs.get("guider")):
            guider, _ = graph.node(inputs["guider"])
            if guider is not None:
                g_inputs = guider.get("inputs", {})
                pos = g_inputs.get("positive", g_inputs.get("conditioning"))
                found.append((node_id, node, pos, g_inputs.get("negative")))
    return sorted(found, key=lambda item: _node_order(item[0]))


def _node_order(node_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", node_id)) or (1 << 30,)


def _as_graph(value: Any, what: str) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise MetadataError(f"ComfyUI {what} is not a JSON object")
    nodes = {
        str(k): v
        for k, v in value.items()
        if isinstance(v, dict) and isinstance(v.get("inputs", {}), dict)
    }
    if not nodes:
        raise MetadataError(f"ComfyUI {what} holds no nodes")
    return nodes


def parse_comfyui(prompt_json: str | None, workflow_json: str | None) -> GenerationRecord:
    """The record of a ComfyUI file from its API graph (`prompt`), else its editor graph
    (`workflow`)."""
    record = GenerationRecord(generator="ComfyUI")
    nodes: dict[str, dict[str, Any]] | None = None
    errors: list[str] = []
    if prompt_json is not None:
        try:
            nodes = _as_graph(load_json(prompt_json, "ComfyUI prompt"), "prompt graph")
        except MetadataError as exc:
            errors.append(str(exc))
    if nodes is None and workflow_json is not None:
        try:
            workflow = load_json(workflow_json, "ComfyUI workflow")
            if not isinstance(workflow, dict):
                raise MetadataError("ComfyUI workflow is not a JSON object")
            nodes = workflow_to_api(workflow, record.warnings)
        except MetadataError as exc:
            errors.append(str(exc))
    record.warnings.extend(errors)
    if workflow_json is not None:
        _core_rules(workflow_json, record)
    if nodes is None:
        return record
    return record_from_nodes(nodes, record)


def _core_rules(workflow_json: str, record: GenerationRecord) -> None:
    """The prompt rules of the core that ran the graph, from the version newer frontends record
    on each core node (`properties`: `cnr_id` comfy-core, `ver`)."""
    try:
        workflow = load_json(workflow_json, "ComfyUI workflow")
    except MetadataError:
        return
    nodes = workflow.get("nodes") if isinstance(workflow, dict) else None
    for node in nodes if isinstance(nodes, list) else []:
        properties = node.get("properties") if isinstance(node, dict) else None
        if isinstance(properties, dict) and properties.get("cnr_id") == "comfy-core":
            rules = comfy_rules_by_version(str(properties.get("ver", "")))
            if rules:
                record.extra["prompt_syntax"], record.extra["prompt_syntax_from"] = rules
            return


def record_from_nodes(
    nodes: dict[str, dict[str, Any]], record: GenerationRecord
) -> GenerationRecord:
    """Fill `record` from an API graph's nodes: the first full-strength sampler's texts and
    settings."""
    graph = ApiGraph(nodes, record.warnings)
    samplers = []
    for node_id, node, positive, negative in _sampler_nodes(graph):
        # Each side keeps its own SDXL text_l: a negative's must never land in the positive's.
        positive_extra: dict[str, Any] = {}
        negative_extra: dict[str, Any] = {}
        model_link = node.get("inputs", {}).get("model")
        if model_link is None:  # SamplerCustomAdvanced: the model rides on its guider
            guider, _ = graph.node(node.get("inputs", {}).get("guider"))
            model_link = (guider or {}).get("inputs", {}).get("model")
        model, loras = graph.model_chain(model_link)
        width, height = graph.latent_size(node.get("inputs", {}).get("latent_image"))
        prompt = ", ".join(graph.conditioning_texts(positive, positive_extra)) or None
        negative_prompt = (
            ", ".join(graph.conditioning_texts(negative, negative_extra)) if negative else None
        )
        # part of the text was generated at run time: unknown
        if positive_extra.get("runtime_text"):
            prompt = None
        if negative_extra.get("runtime_text"):
            negative_prompt = None
        extra = {
            **positive_extra,
            **{f"negative_{key}": value for key, value in negative_extra.items()},
        }
        samplers.append(
            {
                "node": node_id,
                "class_type": node.get("class_type"),
                "prompt": prompt,
                "negative_prompt": negative_prompt,
                "seed": as_int(graph.setting(node, ("seed", "noise_seed"))),
                "steps": as_int(graph.setting(node, ("steps",))),
                "cfg": as_float(graph.setting(node, ("cfg",))),
                "sampler_name": as_str(graph.setting(node, ("sampler_name",))),
                "scheduler": as_str(graph.setting(node, ("scheduler",))),
                "denoise": as_float(graph.setting(node, ("denoise",))),
                "model": model,
                "loras": loras,
                "width": width,
                "height": height,
                **extra,
            }
        )
    if not samplers:
        record.warnings.append(
            "ComfyUI graph has no sampler node with a positive/negative conditioning"
        )
        return record
    # The first full-strength pass is the generation; later passes (hires fix, refiner) refine it.
    primary = next((s for s in samplers if s["denoise"] in (None, 1.0)), samplers[0])
    record.prompt, record.negative_prompt = primary["prompt"], primary["negative_prompt"]
    record.seed, record.steps, record.cfg_scale = primary["seed"], primary["steps"], primary["cfg"]
    record.sampler, record.scheduler = primary["sampler_name"], primary["scheduler"]
    record.model, record.loras = primary["model"], primary["loras"]
    record.width, record.height = primary["width"], primary["height"]
    for key in ("text_l", "negative_text_l", "prompt_parser"):
        if key in primary:
            record.extra[key] = primary[key]
    if primary.get("runtime_text") or primary.get("negative_runtime_text"):
        made_by = (
            ", ".join(f"{r['class_type']} (node {r['node']})" for r in graph.runtime) or "a node"
        )
        record.extra["prompt_unknown"] = (
            f"prompt expanded at run time by {made_by}, encoded text unknown"
        )
        record.extra["prompt_given"] = [r["given"] for r in graph.runtime if r["given"] is not None]
        record.warnings.append(record.extra["prompt_unknown"])
    chatglm = {
        str(n.get("class_type")): n.get("inputs", {})
        for n in nodes.values()
        if re.search(r"chatglm|kolors", str(n.get("class_type", "")), re.IGNORECASE)
    }
    if chatglm:
        # Kolors: a ChatGLM3 encoder reads the prompt inside its own instruction template; no CLIP
        # encoded it, so no text Luna can encode stands for what conditioned the image
        record.extra["prompt_given"] = [
            v
            for inputs in chatglm.values()
            for k, v in inputs.items()
            if k in ("text", "prompt") and isinstance(v, str)
        ]
        record.extra["prompt_unknown"] = (
            f"encoded by a ChatGLM3 text encoder ({', '.join(sorted(chatglm))}) with its own "
            "instruction template, not by CLIP: the conditioning's text is unknown"
        )
        record.prompt = record.negative_prompt = None
        record.warnings.append(record.extra["prompt_unknown"])
    family = next(
        (
            n["inputs"]["type"]
            for n in nodes.values()
            if "CLIPLoader" in str(n.get("class_type", ""))
            and isinstance(n.get("inputs", {}).get("type"), str)
        ),
        None,
    )
    if family:
        record.extra["text_encoder_family"] = family
    record.extra["samplers"] = [
        {**s, "loras": [{"name": lora.name, "weight": lora.weight} for lora in s["loras"]]}
        for s in samplers
    ]
    return record
