"""ComfyUI graphs: find every sampler and walk its conditioning back to the text encoders.

ComfyUI saves the executed API graph (`prompt`: {node_id: {class_type, inputs}}) and the editor
graph (`workflow`: {nodes, links}). Links are `[node_id, output_slot]`. Graphs are untrusted: the
walk keeps a visited set (graphs with cycles end) and bounds its depth and work.
"""

from __future__ import annotations

import re
from typing import Any

from luna_core.metadata.comfyui_nodes import (
    _CONCAT_INPUT,
    _CONTEXT_SIDES,
    _ENCODER_TEXTS,
    _MODEL_NAME_INPUTS,
    _SAMPLER_HINTS,
    _TEXT_INPUTS,
    MAX_VISITS,
    RUNTIME,
    _is_encoder,
    _is_generative,
    _is_link,
    _RuntimeText,
    _switch_inputs,
)
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


class _Graph:
    def __init__(self, nodes: dict[str, dict[str, Any]], warnings: list[str]):
        self.nodes = nodes
        self.warnings = warnings
        self.visits = 0
        self.runtime: list[dict[str, Any]] = []  # generative nodes met: what each was given

    def switch_choice(self, node: dict[str, Any]) -> tuple[bool, Any]:
        """(is a boolean switch, the input it passes): ComfyUI's ComfySwitchNode
        (comfy_extras/nodes_logic.py: `switch`, `on_true`, `on_false`) with its switch a constant
        or a PrimitiveBoolean. An undecidable switch passes None: its text is unknown, never
        guessed."""
        inputs = node.get("inputs", {})
        if "on_true" not in inputs and "on_false" not in inputs:
            return False, None
        value = inputs.get("switch", inputs.get("boolean"))
        if _is_link(value):
            source, _ = self.node(value)
            value = (source or {}).get("inputs", {}).get("value")
        if not isinstance(value, bool):
            self.warnings.append(
                "ComfyUI switch node's switch is not a constant; its branch is unknown"
            )
            return True, None
        return True, inputs.get("on_true" if value else "on_false")

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
        """A string input, following links through primitive, string, concatenate and switch
        nodes."""
        if isinstance(value, str):
            return value
        node, _ = self.node(value)
        if node is None or depth > MAX_DEPTH or not self._budget():
            return None
        key = str(value[0])
        if key in seen:
            return None
        inputs = node.get("inputs", {})
        class_type = str(node.get("class_type", ""))
        if _is_generative(class_type):
            given = next(
                (
                    self.text_of(inputs[n], depth + 1, seen | {key})
                    for n in ("prompt", "text", "string")
                    if n in inputs
                ),
                None,
            )
            self.runtime.append(
                {
                    "node": key,
                    "class_type": class_type,
                    "given": None if given is None or isinstance(given, _RuntimeText) else given,
                }
            )
            return RUNTIME
        is_switch, chosen = self.switch_choice(node)
        if is_switch:
            return self.text_of(chosen, depth + 1, seen | {key}) if chosen is not None else None
        if "source" in inputs and class_type.startswith(
            "Preview"
        ):  # PreviewAny: shows its input, passes it on
            return self.text_of(inputs["source"], depth + 1, seen | {key})
        parts = sorted(name for name in inputs if _CONCAT_INPUT.fullmatch(name))
        if (
            len(parts) >= 2
        ):  # StringConcatenate (string_a, string_b), Text Concatenate (text_a...), text1, text2
            texts = [self.text_of(inputs[name], depth + 1, seen | {key}) for name in parts]
            if any(isinstance(t, _RuntimeText) for t in texts):
                return RUNTIME
            delimiter = next(
                (inputs[d] for d in ("delimiter", "separator") if isinstance(inputs.get(d), str)),
                "",
            )
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
        """The texts of a text encoder's inputs, by input name (CLIP, SDXL, SD3, Flux, HiDream,
        Qwen...)."""
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
                    if isinstance(
                        inputs.get("parser"), str
                    ):  # smZ CLIPTextEncode: the weighting rules it used
                        extra.setdefault("prompt_parser", inputs["parser"])
                    if isinstance(found[main_name], _RuntimeText):
                        extra["runtime_text"] = True
                        continue
                    texts.append(found[main_name])
                    for (
                        name,
                        text,
                    ) in found.items():  # other encoders' texts (SDXL text_l, Flux clip_l...)
                        if name != main_name and text.strip() and text != found[main_name]:
                            extra.setdefault(name, []).append(text)
                    continue
            lowered = class_type.lower()
            if "context" in lowered and slot in _CONTEXT_SIDES:
                # rgthree context/pipe nodes: the output slot says which conditioning travels on.
                side = _CONTEXT_SIDES[slot]
                if _is_link(inputs.get(side)):
                    stack.append((inputs[side], depth + 1))
                else:
                    base = next(
                        (
                            inputs[n]
                            for n in ("base_ctx", "ctx", "context")
                            if _is_link(inputs.get(n))
                        ),
                        None,
                    )
                    if base is not None:
                        stack.append(([base[0], slot], depth + 1))
                continue
            # A node that transforms a (positive, negative) pair: follow the side it was read from.
            if _is_link(inputs.get("positive")) and _is_link(inputs.get("negative")):
                stack.append((inputs["negative" if slot == 1 else "positive"], depth + 1))
                continue
            is_switch, chosen = self.switch_choice(node)
            if is_switch:
                if chosen is not None:
                    stack.append((chosen, depth + 1))
                continue
            switched = _switch_inputs(node)
            if switched:  # Any Switch and friends: the first connected input is what passed
                stack.append((switched[0][1], depth + 1))
                continue
            upstream = [
                value
                for name, value in inputs.items()
                if _is_link(value) and "cond" in name.lower()
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
                return as_int(self.setting(node, ("width",))), as_int(
                    self.setting(node, ("height",))
                )
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
    if nodes is None:
        return record
    return record_from_nodes(nodes, record)


def record_from_nodes(
    nodes: dict[str, dict[str, Any]], record: GenerationRecord
) -> GenerationRecord:
    """Fill `record` from an API graph's nodes: the first full-strength sampler's texts and
    settings."""
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
        negative_prompt = (
            ", ".join(graph.conditioning_texts(negative, negative_extra)) if negative else None
        )
        if positive_extra.get(
            "runtime_text"
        ):  # part of the text was generated at run time: unknown
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
