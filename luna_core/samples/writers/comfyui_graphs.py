"""ComfyUI graphs as other savers and frontends lay them out: Flux, rgthree, Qwen, and the newer
frontend's workflow with its node properties."""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from luna_core.samples.writers.comfyui import comfy_simple_graph
from luna_core.samples.writers.common import (
    Generation,
    png_bytes,
)


def comfy_flux_graph(gen: Generation) -> dict[str, Any]:
    """Flux: CLIPTextEncodeFlux (clip_l + t5xxl) → FluxGuidance → BasicGuider →
    SamplerCustomAdvanced; the negative through a CFGGuider so the sample carries one (Flux dev
    ignores it at cfg 1)."""
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": f"{gen.model}.safetensors", "weight_dtype": "fp8"},
        },
        "2": {
            "class_type": "DualCLIPLoader",
            "inputs": {
                "clip_name1": "t5xxl_fp16.safetensors",
                "clip_name2": "clip_l.safetensors",
                "type": "flux",
            },
        },
        "3": {
            "class_type": "CLIPTextEncodeFlux",
            "inputs": {
                "clip": ["2", 0],
                "clip_l": gen.prompt,
                "t5xxl": gen.prompt,
                "guidance": 3.5,
            },
        },
        "4": {
            "class_type": "CLIPTextEncodeFlux",
            "inputs": {
                "clip": ["2", 0],
                "clip_l": gen.negative,
                "t5xxl": gen.negative,
                "guidance": 3.5,
            },
        },
        "5": {
            "class_type": "CFGGuider",
            "inputs": {
                "model": ["1", 0],
                "positive": ["3", 0],
                "negative": ["4", 0],
                "cfg": gen.cfg,
            },
        },
        "6": {"class_type": "RandomNoise", "inputs": {"noise_seed": gen.seed}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "8": {
            "class_type": "BasicScheduler",
            "inputs": {
                "model": ["1", 0],
                "scheduler": "simple",
                "steps": gen.steps,
                "denoise": 1.0,
            },
        },
        "9": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
        },
        "10": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["6", 0],
                "guider": ["5", 0],
                "sampler": ["7", 0],
                "sigmas": ["8", 0],
                "latent_image": ["9", 0],
            },
        },
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["12", 0]}},
        "12": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "13": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "flux", "images": ["11", 0]},
        },
    }


def comfy_rgthree_graph(gen: Generation) -> dict[str, Any]:
    """The prompt built by string nodes (a primitive and a concatenation), encoded by rgthree's
    Power Prompt, carried in an rgthree Context, picked by an Any Switch, and sampled inside a
    subgraph (ids 'outer:inner', as the frontend flattens subgraphs into the API graph)."""
    subject, style = gen.prompt.split(", ", 1) if ", " in gen.prompt else (gen.prompt, "")
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": f"{gen.model}.safetensors"},
        },
        "20": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": subject}},
        "21": {
            "class_type": "StringConcatenate",
            "inputs": {
                "string_a": ["20", 0],
                "string_b": style,
                "delimiter": ", " if style else "",
            },
        },
        "22": {
            "class_type": "Power Prompt (rgthree)",
            "inputs": {"prompt": ["21", 0], "opt_clip": ["4", 1], "opt_model": ["4", 0]},
        },
        "23": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.negative, "clip": ["4", 1]}},
        "24": {
            "class_type": "Context (rgthree)",
            "inputs": {
                "base_ctx": None,
                "model": ["4", 0],
                "clip": ["4", 1],
                "positive": ["22", 0],
                "negative": ["23", 0],
            },
        },
        "25": {
            "class_type": "Context Big (rgthree)",
            "inputs": {"base_ctx": ["24", 0], "steps": gen.steps},
        },
        "26": {"class_type": "Any Switch (rgthree)", "inputs": {"any_01": ["25", 4]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
        },
        "30:3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": gen.seed,
                "steps": gen.steps,
                "cfg": gen.cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["26", 0],
                "negative": ["25", 5],
                "latent_image": ["5", 0],
            },
        },
        "30:8": {"class_type": "VAEDecode", "inputs": {"samples": ["30:3", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["30:8", 0]},
        },
    }


def comfy_qwen_graph(gen: Generation) -> dict[str, Any]:
    """Qwen-Image edit: the text reaches TextEncodeQwenImageEdit's `prompt` (a clip, a vae and an
    image beside)."""
    graph = comfy_simple_graph(gen)
    graph["6"] = {
        "class_type": "TextEncodeQwenImageEdit",
        "inputs": {"clip": ["4", 1], "prompt": gen.prompt, "vae": ["4", 2], "image": ["10", 0]},
    }
    graph["7"] = {
        "class_type": "TextEncodeQwenImageEdit",
        "inputs": {"clip": ["4", 1], "prompt": gen.negative, "vae": ["4", 2]},
    }
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "input.png"}}
    return graph


def _api_png(graph_of):
    def write(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
        api = graph_of(gen)
        return png_bytes(image, text=[("prompt", json.dumps(api, ensure_ascii=False))]), "png"

    return write


def write_comfy_frontend_workflow_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """Only the editor graph, as the newer frontend saves it: widget inputs listed on each node with
    a `widget` name (here on node types Luna has no layout for), a Reroute between encoder and
    sampler, and the positive text coming from a PrimitiveNode wired into the encoder's `text`
    widget."""
    nodes = [
        {
            "id": 4,
            "type": "CheckpointLoaderSimple",
            "inputs": [],
            "widgets_values": [f"{gen.model}.safetensors"],
        },
        {
            "id": 11,
            "type": "PrimitiveNode",
            "inputs": [],
            "outputs": [{"name": "STRING", "links": [1]}],
            "widgets_values": [gen.prompt],
        },
        {
            "id": 6,
            "type": "CLIPTextEncode",
            "inputs": [
                {"name": "clip", "type": "CLIP", "link": 2},
                {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 1},
            ],
            "widgets_values": [""],
        },
        {
            "id": 7,
            "type": "CLIPTextEncode",
            "inputs": [
                {"name": "clip", "type": "CLIP", "link": 3},
                {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None},
            ],
            "widgets_values": [gen.negative],
        },
        {
            "id": 12,
            "type": "Reroute",
            "inputs": [{"name": "", "type": "*", "link": 4}],
            "widgets_values": [],
        },
        {
            "id": 5,
            "type": "EmptyLatentImage",
            "inputs": [],
            "widgets_values": [gen.width, gen.height, 1],
        },
        {
            "id": 3,
            "type": "KSamplerEfficientish",
            "inputs": [
                {"name": "model", "type": "MODEL", "link": 5},
                {"name": "positive", "type": "CONDITIONING", "link": 6},
                {"name": "negative", "type": "CONDITIONING", "link": 7},
                {"name": "latent_image", "type": "LATENT", "link": 8},
                {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None},
                {"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": None},
                {"name": "cfg", "type": "FLOAT", "widget": {"name": "cfg"}, "link": None},
                {
                    "name": "sampler_name",
                    "type": "COMBO",
                    "widget": {"name": "sampler_name"},
                    "link": None,
                },
                {
                    "name": "scheduler",
                    "type": "COMBO",
                    "widget": {"name": "scheduler"},
                    "link": None,
                },
            ],
            "widgets_values": [gen.seed, "fixed", gen.steps, gen.cfg, "euler", "normal"],
        },
    ]
    # [id, origin node, origin slot, target node, target slot, type]
    links = [
        [1, 11, 0, 6, 1, "STRING"],
        [2, 4, 1, 6, 0, "CLIP"],
        [3, 4, 1, 7, 0, "CLIP"],
        [4, 6, 0, 12, 0, "*"],
        [5, 4, 0, 3, 0, "MODEL"],
        [6, 12, 0, 3, 1, "CONDITIONING"],
        [7, 7, 0, 3, 2, "CONDITIONING"],
        [8, 5, 0, 3, 3, "LATENT"],
    ]
    workflow = {
        "last_node_id": 12,
        "last_link_id": 8,
        "nodes": nodes,
        "links": links,
        "version": 0.4,
    }
    return png_bytes(image, text=[("workflow", json.dumps(workflow, ensure_ascii=False))]), "png"
