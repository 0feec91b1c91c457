"""What kind of node a ComfyUI API-graph node is, told from its class name and its inputs."""

from __future__ import annotations

import re
from typing import Any

MAX_VISITS = 5_000
_SAMPLER_HINTS = ("seed", "noise_seed", "steps", "cfg")
_TEXT_INPUTS = (
    "text",
    "text_g",
    "string",
    "prompt",
    "value",
    "text_positive",
    # Impact Pack's wildcard nodes: the frontend fills `populated_text` before the run, and that is
    # what is encoded; `wildcard_text` is the template
    "populated_text",
    "wildcard_text",
)
# A wildcard left in a template (`__colors__`): never the text an encoder got.
WILDCARD_TEMPLATE = re.compile(r"__[\w\-/.*]+__")
# LoRA-tag nodes (comfyui_lora_tag_loader's LoraTagLoader and its kind): they load each
# `<lora:name:weight>` of their text and hand the text on without the tags.
_LORA_TAG_TEXT = re.compile(r"<lora:[^>]+>", re.IGNORECASE)


def is_lora_tag_loader(class_type: str) -> bool:
    return "loratag" in class_type.lower().replace(" ", "").replace("_", "")


def without_lora_tags(text: str) -> str:
    return _LORA_TAG_TEXT.sub("", text)


# Text inputs of text encoders, main text first: CLIPTextEncode (text), Qwen/rgthree (prompt), Flux
# and SD3 (t5xxl), SDXL (text_g, text_l), SD3/HiDream (clip_g, llama, clip_l).
_ENCODER_TEXTS = ("text", "prompt", "t5xxl", "text_g", "clip_g", "llama", "clip_l", "text_l")
_CONCAT_INPUT = re.compile(r"(string|text)_?([a-f]|[0-9])")
# rgthree context outputs: CONTEXT, MODEL, CLIP, VAE, POSITIVE, NEGATIVE, LATENT, IMAGE, SEED.
_CONTEXT_SIDES = {4: "positive", 5: "negative"}
_MODEL_NAME_INPUTS = ("ckpt_name", "unet_name", "model_name", "base_ckpt_name")
# Nodes that write text at run time (an LLM expanding the prompt): their output is never saved in
# the file. ComfyUI's own TextGenerate (comfy_extras/nodes_textgen.py) and the common custom packs'.
_GENERATIVE = (
    "textgenerate",
    "llm",
    "ollama",
    "gemini",
    "openai",
    "gpt",
    "florence2run",
    "joycaption",
    "promptgen",
    "promptexpansion",
    "magicprompt",
    "qwenvl",
)


class _RuntimeText(str):
    """Text a node generated at run time: unknown; any text built from it is unknown too."""


RUNTIME = _RuntimeText("<text generated at run time>")


def _is_generative(class_type: str) -> bool:
    lowered = class_type.lower().replace(" ", "").replace("_", "")
    return any(marker in lowered for marker in _GENERATIVE)


def _is_encoder(class_type: str, inputs: dict[str, Any]) -> bool:
    """A text encoder: a node that takes a CLIP (`clip`, rgthree's `opt_clip`), or whose class name
    says so (`...TextEncode...`: Flux, SD3, HiDream, Qwen, Wan, Krea)."""
    return (
        any(_is_link(inputs.get(n)) for n in ("clip", "opt_clip"))
        or "textencode" in class_type.lower()
    )


def _switch_inputs(node: dict[str, Any]) -> list[tuple[str, Any]]:
    """The connected inputs of a switch/reroute node, in order (rgthree Any Switch: any_01,
    any_02...)."""
    class_type = str(node.get("class_type", "")).lower()
    if "switch" not in class_type and "reroute" not in class_type:
        return []
    inputs = node.get("inputs", {})
    return sorted(
        ((name, value) for name, value in inputs.items() if _is_link(value)),
        key=lambda item: item[0],
    )


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], (str, int))
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )
