"""A ComfyUI API graph (the `prompt` chunk) walked within bounds: nodes, links through primitive,
string, concatenate and switch nodes, and the text each input carries."""

from __future__ import annotations

from typing import Any

from luna_core.metadata.comfyui_nodes import (
    _CONCAT_INPUT,
    _CONTEXT_SIDES,
    _ENCODER_TEXTS,
    _MODEL_NAME_INPUTS,
    _TEXT_INPUTS,
    MAX_VISITS,
    RUNTIME,
    WILDCARD_TEMPLATE,
    _is_encoder,
    _is_generative,
    _is_link,
    _RuntimeText,
    _switch_inputs,
    is_lora_tag_loader,
    without_lora_tags,
)
from luna_core.metadata.comfyui_workflow import MAX_DEPTH
from luna_core.metadata.record import (
    Lora,
    as_float,
    as_int,
    as_str,
)


class ApiGraph:
    def __init__(self, nodes: dict[str, dict[str, Any]], warnings: list[str]):
        self.nodes = nodes
        self.warnings = warnings
        self.visits = 0
        self.runtime: list[dict[str, Any]] = []  # generative nodes met: what each was given
        self.lora_tags_taken = False  # a LoRA-tag node took `<lora:…>` out of an encoder's text

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
        if is_lora_tag_loader(class_type) and "text" in inputs:
            text = self.text_of(inputs["text"], depth + 1, seen | {key})
            if text is None or isinstance(text, _RuntimeText):
                return text
            self.lora_tags_taken = True
            return without_lora_tags(text)
        is_switch, chosen = self.switch_choice(node)
        if is_switch:
            return self.text_of(chosen, depth + 1, seen | {key}) if chosen is not None else None
        # PreviewAny: shows its input, passes it on
        if "source" in inputs and class_type.startswith("Preview"):
            return self.text_of(inputs["source"], depth + 1, seen | {key})
        parts = sorted(name for name in inputs if _CONCAT_INPUT.fullmatch(name))
        # StringConcatenate (string_a, string_b), Text Concatenate (text_a...), text1, text2
        if len(parts) >= 2:
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
                if found is None or (name == "populated_text" and not found.strip()):
                    continue  # an empty populated text: the template below says what was meant
                if name == "wildcard_text" and WILDCARD_TEMPLATE.search(found):
                    # a template whose populated text the file lacks: the encoded text is unknown
                    self.warnings.append(
                        f"node {key} ({class_type}) keeps only its wildcard template: the text it "
                        "encoded is unknown"
                    )
                    return None
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
                    # smZ CLIPTextEncode: the weighting rules it used
                    if isinstance(inputs.get("parser"), str):
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
