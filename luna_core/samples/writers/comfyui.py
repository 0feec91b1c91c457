"""ComfyUI: the API graph (`prompt`) and the UI graph (`workflow`) in PNG text chunks or WebP
IFD0 tags."""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from luna_core.samples.writers.common import (
    Generation,
    ascii_tag,
    png_bytes,
    tiff_block,
    webp_bytes,
)

# ---------------------------------------------------------------- ComfyUI

UI_LAYOUTS = {
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
    "KSampler": [
        "seed",
        "control_after_generate",
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
    ],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "SaveImage": ["filename_prefix"],
}


def comfy_sdxl_hires_graph(gen: Generation) -> dict[str, Any]:
    """Checkpoint → LoRA → SDXL encoders → KSampler → latent upscale → second KSampler
    (hires fix)."""
    lora = gen.loras[0] if gen.loras else ("detail_tweaker_xl", 0.6)
    sampler = gen.sampler.lower().replace("++ ", "pp_").replace(" ", "_")
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": f"{gen.model}.safetensors"},
        },
        "10": {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": f"{lora[0]}.safetensors",
                "strength_model": lora[1],
                "strength_clip": lora[1],
                "model": ["4", 0],
                "clip": ["4", 1],
            },
        },
        "6": {
            "class_type": "CLIPTextEncodeSDXL",
            "inputs": {
                "width": 4096,
                "height": 4096,
                "crop_w": 0,
                "crop_h": 0,
                "target_width": 4096,
                "target_height": 4096,
                "text_g": gen.prompt,
                "text_l": gen.prompt,
                "clip": ["10", 1],
            },
        },
        "7": {
            "class_type": "CLIPTextEncodeSDXL",
            "inputs": {
                "width": 4096,
                "height": 4096,
                "crop_w": 0,
                "crop_h": 0,
                "target_width": 4096,
                "target_height": 4096,
                "text_g": gen.negative,
                "text_l": gen.negative,
                "clip": ["10", 1],
            },
        },
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": gen.seed,
                "steps": gen.steps,
                "cfg": gen.cfg,
                "sampler_name": sampler,
                "scheduler": gen.scheduler.lower(),
                "denoise": 1.0,
                "model": ["10", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "11": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"upscale_method": "nearest-exact", "scale_by": 1.5, "samples": ["3", 0]},
        },
        "12": {
            "class_type": "KSampler",
            "inputs": {
                "seed": gen.seed + 1,
                "steps": 12,
                "cfg": gen.cfg,
                "sampler_name": sampler,
                "scheduler": gen.scheduler.lower(),
                "denoise": 0.45,
                "model": ["10", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["11", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}},
        "9": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]},
        },
    }


def comfy_custom_sampler_graph(gen: Generation) -> dict[str, Any]:
    """SamplerCustomAdvanced fed by a CFGGuider whose positive is a ConditioningConcat of two
    encoders, one of which reads its text from a primitive string node."""
    subject, _, style = gen.prompt.partition(", ")
    return {
        "1": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": f"{gen.model}.safetensors"},
        },
        "14": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": subject}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["14", 0], "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": style, "clip": ["1", 1]}},
        "4": {
            "class_type": "ConditioningConcat",
            "inputs": {"conditioning_to": ["2", 0], "conditioning_from": ["3", 0]},
        },
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.negative, "clip": ["1", 1]}},
        "6": {
            "class_type": "CFGGuider",
            "inputs": {
                "cfg": gen.cfg,
                "model": ["1", 0],
                "positive": ["4", 0],
                "negative": ["5", 0],
            },
        },
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": gen.seed}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "9": {
            "class_type": "BasicScheduler",
            "inputs": {
                "scheduler": "sgm_uniform",
                "steps": gen.steps,
                "denoise": 1.0,
                "model": ["1", 0],
            },
        },
        "10": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
        },
        "11": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["7", 0],
                "guider": ["6", 0],
                "sampler": ["8", 0],
                "sigmas": ["9", 0],
                "latent_image": ["10", 0],
            },
        },
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": ["12", 0]},
        },
    }


def sample_and_save(
    gen: Generation,
    ids: tuple[str, str, str],
    links: dict[str, list],
    sampler: tuple[str, str] = ("euler", "normal"),
) -> dict[str, Any]:
    """The tail most graphs end with: a full-strength KSampler, VAEDecode, SaveImage, under node ids
    `ids`. `links`: the KSampler's model, positive, negative and latent_image, and the decoder's
    vae."""
    sampler_id, decode_id, save_id = ids
    return {
        sampler_id: {
            "class_type": "KSampler",
            "inputs": {
                "seed": gen.seed,
                "steps": gen.steps,
                "cfg": gen.cfg,
                "sampler_name": sampler[0],
                "scheduler": sampler[1],
                "denoise": 1.0,
                **{name: links[name] for name in ("model", "positive", "negative", "latent_image")},
            },
        },
        decode_id: {
            "class_type": "VAEDecode",
            "inputs": {"samples": [sampler_id, 0], "vae": links["vae"]},
        },
        save_id: {
            "class_type": "SaveImage",
            "inputs": {"filename_prefix": "ComfyUI", "images": [decode_id, 0]},
        },
    }


def comfy_simple_graph(gen: Generation) -> dict[str, Any]:
    return {
        "4": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": f"{gen.model}.safetensors"},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.negative, "clip": ["4", 1]}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
        },
        **sample_and_save(
            gen,
            ("3", "8", "9"),
            {
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "vae": ["4", 2],
            },
        ),
    }


def api_to_workflow(api: dict[str, Any]) -> dict[str, Any]:
    """The editor graph ComfyUI saves beside the API graph: nodes with widget values, and links."""
    nodes, links = [], []
    for node_id, node in api.items():
        layout = UI_LAYOUTS.get(node["class_type"], [])
        inputs = node["inputs"]
        widgets = [
            inputs.get(name, "randomize" if name == "control_after_generate" else None)
            for name in layout
        ]
        ui_inputs = []
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2:
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), len(ui_inputs), "*"])
                ui_inputs.append({"name": name, "type": "*", "link": link_id})
        nodes.append(
            {
                "id": int(node_id),
                "type": node["class_type"],
                "pos": [0, 0],
                "size": [300, 100],
                "inputs": ui_inputs,
                "widgets_values": widgets,
            }
        )
    return {
        "last_node_id": max(int(k) for k in api),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {},
        "version": 0.4,
    }


def write_comfyui_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    api = comfy_sdxl_hires_graph(gen)
    return png_bytes(
        image, text=[("prompt", json.dumps(api)), ("workflow", json.dumps(api_to_workflow(api)))]
    ), "png"


def write_comfyui_custom_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    api = comfy_custom_sampler_graph(gen)
    return png_bytes(
        image, text=[("prompt", json.dumps(api)), ("workflow", json.dumps(api_to_workflow(api)))]
    ), "png"


def write_comfyui_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    # ComfyUI's SaveAnimatedWEBP: Model (0x0110) = 'prompt:' + JSON, Make (0x010F) = 'workflow:' +
    # JSON.
    api = comfy_simple_graph(gen)
    tiff = tiff_block(
        {
            0x0110: ascii_tag("prompt:" + json.dumps(api)),
            0x010F: ascii_tag("workflow:" + json.dumps(api_to_workflow(api))),
        },
        {},
        big_endian=False,
    )
    return webp_bytes(image, exif=b"Exif\x00\x00" + tiff), "webp"


def write_comfyui_workflow_only_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(
        image, text=[("workflow", json.dumps(api_to_workflow(comfy_simple_graph(gen))))]
    ), "png"
