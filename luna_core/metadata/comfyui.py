"""ComfyUI graphs: find every sampler and walk its conditioning back to the text encoders.

ComfyUI saves the executed API graph (`prompt`: {node_id: {class_type, inputs}}) and the editor
graph (`workflow`: {nodes, links}). Links are `[node_id, output_slot]`. Graphs are untrusted: the walk
keeps a visited set (graphs with cycles end) and bounds its depth and work.
"""

from __future__ import annotations

import re
from typing import Any

from luna_core.metadata.comfyui_workflow import MAX_DEPTH, workflow_to_api
from luna_core.metadata.record import (
    GenerationRecord,
    Lora,
    MetadataError,
    as_float,
    as_int,
    as_str,
    load_json,
)

MAX_VISITS = 5_000
_SAMPLER_HINTS = ("seed", "noise_seed", "steps", "cfg")
_TEXT_INPUTS = ("text", "text_g", "string", "prompt", "value", "text_positive", "wildcard_text", "populated_text")
# Text inputs of text encoders, main text first: CLIPTextEncode (text), Qwen/rgthree (prompt), Flux and
# SD3 (t5xxl), SDXL (text_g, text_l), SD3/HiDream (clip_g, llama, clip_l).
_ENCODER_TEXTS = ("text", "prompt", "t5xxl", "text_g", "clip_g", "llama", "clip_l", "text_l")
_CONCAT_INPUT = re.compile(r"(string|text)_?([a-f]|[0-9])")
# rgthree context outputs: CONTEXT, MODEL, CLIP, VAE, POSITIVE, NEGATIVE, LATENT, IMAGE, SEED.
_CONTEXT_SIDES = {4: "positive", 5: "negative"}
_MODEL_NAME_INPUTS = ("ckpt_name", "unet_name", "model_name", "base_ckpt_name")

def _is_encoder(class_type: str, inputs: dict[str, Any]) -> bool:
    """A text encoder: a node that takes a CLIP (`clip`, rgthree's `opt_clip`), or whose class name says so
    (`...TextEncode...`: Flux, SD3, HiDream, Qwen, Wan, Krea)."""
    return any(_is_link(inputs.get(n)) for n in ("clip", "opt_clip")) or "textencode" in class_type.lower()


def _switch_inputs(node: dict[str, Any]) -> list[tuple[str, Any]]:
    """The connected inputs of a switch/reroute node, in order (rgthree Any Switch: any_01, any_02...)."""
    class_type = str(node.get("class_type", "")).lower()
    if "switch" not in class_type and "reroute" not in class_type:
        return []
    inputs = node.get("inputs", {})
    return sorted(((name, value) for name, value in inputs.items() if _is_link(value)), key=lambda item: item[0])


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


class _Graph:
    def __init__(self, nodes: dict[str, dict[str, Any]], warnings: list[str]):
        self.nodes = nodes
        self.warnings = warnings
        self.visits = 0

    def node(self, link: Any) -> tuple[dict[str, Any] | None, int]:
        if not _is_link(link):
            return None, 0
        return self.nodes.get(str(link[0])), link[1]

    def _budget(self) -> bool:
        self.visits += 1
        if self.visits == MAX_VISITS:
            self.warnings.append(f"ComfyUI graph walk stopped after {MAX_VISITS:,} steps")
        return self.visits < MAX_VISITS

    def text_of(self, value: Any, depth: int = 0, seen: frozenset[str] = frozenset()) -> str | None:
        """A string input, following links through primitive, string, concatenate and switch nodes."""
        if isinstance(value, str):
            return value
        node, _ = self.node(value)
        if node is None or depth > MAX_DEPTH or not self._budget():
            return None
        key = str(value[0])
        if key in seen:
            return None
        inputs = node.get("inputs", {})
        parts = sorted(name for name in inputs if _CONCAT_INPUT.fullmatch(name))
        if len(parts) >= 2:  # StringConcatenate (string_a, string_b), Text Concatenate (text_a...), text1, text2
            texts = [self.text_of(inputs[name], depth + 1, seen | {key}) for name in parts]
            delimiter = next((inputs[d] for d in ("delimiter", "separator") if isinstance(inputs.get(d), str)), "")
            return delimiter.join(t for t in texts if t) if any(texts) else None
        for name in _TEXT_INPUTS:
            if name in inputs:
                found = self.text_of(inputs[name], depth + 1, seen | {key})
                if found is not None:
                    return found
        for _, link in _switch_inputs(node):
            found = self.text_of(link, depth + 1, seen | {key})
            if found is not None:
                return found
        return None

    def encoder_texts(self, inputs: dict[str, Any]) -> dict[str, str]:
        """The texts of a text encoder's inputs, by input name (CLIP, SDXL, SD3, Flux, HiDream, Qwen...)."""
        texts = {}
        for name in _ENCODER_TEXTS:
            if name in inputs:
                text = self.text_of(inputs[name])
                if text is not None:
                    texts[name] = text
        return texts

    def conditioning_texts(self, link: Any, extra: dict[str, Any]) -> list[str]:
        """Texts of every encoder that feeds a conditioning link, in input order."""
        texts: list[str] = []
        stack = [(link, 0)]
        seen: set[tuple[str, int]] = set()
        while stack:
            current, depth = stack.pop()
            node, slot = self.node(current)
            if node is None or depth > MAX_DEPTH or not self._budget():
                continue
            marker = (str(current[0]), slot)
            if marker in seen:
                continue
            seen.add(marker)
            inputs = node.get("inputs", {})
            class_type = str(node.get("class_type", ""))
            if _is_encoder(class_type, inputs):
                found = self.encoder_texts(inputs)
                if found:
                    main_name = next(name for name in _ENCODER_TEXTS if name in found)
                    texts.append(found[main_name])
                    for name, text in found.items():  # other encoders' texts (SDXL text_l, Flux clip_l...)
                        if name != main_name and text != found[main_name]:
                            extra.setdefault(name, []).append(text)
                    continue
            lowered = class_type.lower()
            if "context" in lowered and slot in _CONTEXT_SIDES:
                # rgthree context/pipe nodes: the output slot says which conditioning travels on.
                side = _CONTEXT_SIDES[slot]
                if _is_link(inputs.get(side)):
                    stack.append((inputs[side], depth + 1))
                else:
                    base = next((inputs[n] for n in ("base_ctx", "ctx", "context") if _is_link(inputs.get(n))), None)
                    if base is not None:
                        stack.append(([base[0], slot], depth + 1))
                continue
            # A node that transforms a (positive, negative) pair: follow the side it was read from.
            if _is_link(inputs.get("positive")) and _is_link(inputs.get("negative")):
                stack.append((inputs["negative" if slot == 1 else "positive"], depth + 1))
                continue
            switched = _switch_inputs(node)
            if switched:  # Any Switch and friends: the first connected input is what passed
                stack.append((switched[0][1], depth + 1))
                continue
            upstream = [
                value for name, value in inputs.items() if _is_link(value) and "cond" in name.lower()
            ]
            stack.extend((value, depth + 1) for value in reversed(upstream))
        ordered: list[str] = []
        for text in texts:
            if text not in ordered:
                ordered.append(text)
        return ordered

    def setting(self, node: dict[str, Any], names: tuple[str, ...], depth: int = 0) -> Any:
        """A literal setting on the node or on the nodes linked to it (noise, sigmas, guider...)."""
        inputs = node.get("inputs", {})
        for name in names:
            value = inputs.get(name)
            if value is not None and not _is_link(value):
                return value
            if _is_link(value):
                source, _ = self.node(value)
                if source is not None and depth < 4 and self._budget():
                    found = self.setting(source, (name, "value", "seed", "int", "float"), depth + 1)
                    if found is not None:
                        return found
        if depth < 2:
            for name, value in inputs.items():
                if name in ("positive", "negative", "model", "latent_image", "clip", "vae"):
                    continue
                source, _ = self.node(value)
                if source is not None and self._budget():
                    found = self.setting(source, names, depth + 1)
                    if found is not None:
                        return found
        return None

    def model_chain(self, link: Any) -> tuple[str | None, list[Lora]]:
        model, loras, depth = None, [], 0
        node, _ = self.node(link)
        seen: set[int] = set()
        while node is not None and depth < MAX_DEPTH and id(node) not in seen and self._budget():
            seen.add(id(node))
            inputs = node.get("inputs", {})
            lora_name = as_str(inputs.get("lora_name"))
            if lora_name:
                weight = as_float(inputs.get("strength_model"))
                loras.append(Lora(lora_name, 1.0 if weight is None else weight))
            for name in _MODEL_NAME_INPUTS:
                if isinstance(inputs.get(name), str):
                    model = inputs[name]
                    break
            if model is not None:
                break
            node, _ = self.node(inputs.get("model"))
            depth += 1
        loras.reverse()  # outermost loader last in the chain, first applied
        return model, loras

    def latent_size(self, link: Any) -> tuple[int | None, int | None]:
        node, depth = self.node(link)[0], 0
        while node is not None and depth < MAX_DEPTH and self._budget():
            inputs = node.get("inputs", {})
            if "width" in inputs and "height" in inputs:
                return as_int(self.setting(node, ("width",))), as_int(self.setting(node, ("height",)))
            nxt = inputs.get("samples", inputs.get("latent_image", inputs.get("latent")))
            node, _ = self.node(nxt)
            depth += 1
        return None, None


def _sampler_nodes(graph: _Graph) -> list[tuple[str, dict[str, Any], Any, Any]]:
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
    nodes = {str(k): v for k, v in value.items() if isinstance(v, dict) and isinstance(v.get("inputs", {}), dict)}
    if not nodes:
        raise MetadataError(f"ComfyUI {what} holds no nodes")
    return nodes


def parse_comfyui(prompt_json: str | None, workflow_json: str | None) -> GenerationRecord:
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
    if nodes is None:
        return record
    graph = _Graph(nodes, record.warnings)
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
        negative_prompt = ", ".join(graph.conditioning_texts(negative, negative_extra)) if negative else None
        extra = {**positive_extra, **{f"negative_{key}": value for key, value in negative_extra.items()}}
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
        record.warnings.append("ComfyUI graph has no sampler node with a positive/negative conditioning")
        return record
    # The first full-strength pass is the generation; later passes (hires fix, refiner) refine it.
    primary = next((s for s in samplers if s["denoise"] in (None, 1.0)), samplers[0])
    record.prompt, record.negative_prompt = primary["prompt"], primary["negative_prompt"]
    record.seed, record.steps, record.cfg_scale = primary["seed"], primary["steps"], primary["cfg"]
    record.sampler, record.scheduler = primary["sampler_name"], primary["scheduler"]
    record.model, record.loras = primary["model"], primary["loras"]
    record.width, record.height = primary["width"], primary["height"]
    for key in ("text_l", "negative_text_l"):
        if key in primary:
            record.extra[key] = primary[key]
    record.extra["samplers"] = [
        {**s, "loras": [{"name": lora.name, "weight": lora.weight} for lora in s["loras"]]} for s in samplers
    ]
    return record
