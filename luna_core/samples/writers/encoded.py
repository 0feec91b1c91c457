"""Writers whose stored prompt must be the text the generator encoded, not the text its user typed:
legacy InvokeAI (Dream switches, bracket negatives, both chunks), Civitai's on-site generator,
Gradio apps, and ComfyUI graphs that compute their text (switches, string nodes, an LLM expanding
it)."""

from __future__ import annotations

import json
from typing import Any

from PIL import Image

from luna_core.samples.writers.comfyui import api_to_workflow, sample_and_save
from luna_core.samples.writers.common import (
    Generation,
    jpeg_bytes,
    png_bytes,
    tiff_block,
    user_comment,
)

# ---------------------------------------------------------------- InvokeAI 1.x-2.x


def dream_line(gen: Generation) -> str:
    """Args.dream_prompt_str() of InvokeAI 2.x: the prompt (negative in brackets) quoted, then
    switches, face restoration, upscaling and variations included."""
    prompt = f"{gen.prompt} [{gen.negative}]" if gen.negative else gen.prompt
    return (
        f'"{prompt}" -s {gen.steps} -S {gen.seed} -W {gen.width} -H {gen.height} -C {gen.cfg:g} '
        "-A k_lms "
        f"-G 0.9 -ft codeformer -cf 0.75 -U 4 0.95 -V 3647897225,0.1;1614299449,0.1"
    )


def write_invokeai_legacy_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """An early 2.x file: the Dream line beside `sd-metadata` whose generation is `images[0]` and
    whose model is `model_id`."""
    prompt = f"{gen.prompt} [{gen.negative}]" if gen.negative else gen.prompt
    metadata = {
        "model": "stable diffusion",
        "model_id": gen.model,
        "model_hash": gen.model_hash,
        "app_id": "lstein/stable-diffusion",
        "app_version": "v1.15",
        "images": [
            {
                "prompt": [{"prompt": prompt, "weight": 1.0}],
                "seed": gen.seed,
                "steps": gen.steps,
                "cfg_scale": gen.cfg,
                "sampler": "k_lms",
                "width": gen.width,
                "height": gen.height,
                "type": "txt2img",
                "variations": [[3647897225, 0.1], [1614299449, 0.1]],
            }
        ],
    }
    return png_bytes(
        image, text=[("Dream", dream_line(gen)), ("sd-metadata", json.dumps(metadata))]
    ), "png"


# ---------------------------------------------------------------- Civitai's on-site generator


def civitai_generator_record(gen: Generation) -> dict[str, Any]:
    """The JSON Civitai's generator writes: its ComfyUI graph (AIR URNs, `resource-stack` loaders,
    smZ encoders) and `extraMetadata`, a JSON string."""
    loras = [
        (f"urn:air:sdxl:lora:civitai:{58390 + i}@{62833 + i}", weight)
        for i, (_, weight) in enumerate(gen.loras)
    ]
    graph: dict[str, Any] = {
        "resource-stack": {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "urn:air:sdxl:checkpoint:civitai:133005@456194"},
        },
    }
    model = ["resource-stack", 0]
    for i, (urn, weight) in enumerate(loras, start=1):
        graph[f"resource-stack-{i}"] = {
            "class_type": "LoraLoader",
            "inputs": {
                "lora_name": urn,
                "strength_model": weight,
                "strength_clip": 1,
                "model": model,
                "clip": [model[0], 1],
            },
        }
        model = [f"resource-stack-{i}", 0]
    for node, text in (("6", gen.prompt), ("7", gen.negative)):
        graph[node] = {
            "class_type": "smZ CLIPTextEncode",
            "inputs": {
                "text": text,
                "parser": "A1111",
                "mean_normalization": True,
                "multi_conditioning": True,
                "use_old_emphasis_implementation": False,
                "with_SDXL": False,
                "ascore": 2.5,
                "text_g": "",
                "text_l": "",
                "clip": [model[0], 1],
            },
            "_meta": {"title": "Positive" if node == "6" else "Negative"},
        }
    graph.update(
        {
            "20": {
                "class_type": "UpscaleModelLoader",
                "inputs": {"model_name": "urn:air:other:upscaler:civitai:147759@164821"},
            },
            "26": {
                "class_type": "EmptyLatentImage",
                "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
            },
            **sample_and_save(
                gen,
                ("11", "27", "12"),
                {
                    "model": model,
                    "positive": ["6", 0],
                    "negative": ["7", 0],
                    "latent_image": ["26", 0],
                    "vae": ["resource-stack", 2],
                },
                ("euler_ancestral", "normal"),
            ),
        }
    )
    extra = {
        "prompt": gen.prompt,
        "negativePrompt": gen.negative,
        "steps": gen.steps,
        "cfgScale": gen.cfg,
        "sampler": "Euler a",
        "seed": gen.seed,
        "workflowId": "txt2img",
        "resources": [{"modelVersionId": 456194, "strength": 1}]
        + [{"modelVersionId": 62833 + i, "strength": w} for i, (_, w) in enumerate(loras)],
    }
    graph["extraMetadata"] = json.dumps(extra)
    return graph


def write_civitai_generator_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """A little-endian EXIF whose UserComment says UNICODE and holds big-endian UTF-16 (as
    Civitai's are)."""
    comment = user_comment(
        json.dumps(civitai_generator_record(gen), ensure_ascii=False), "utf-16-be"
    )
    return jpeg_bytes(
        image, [b"Exif\x00\x00" + tiff_block({}, {0x9286: (7, comment)}, big_endian=False)]
    ), "jpeg"


# ---------------------------------------------------------------- Gradio apps


def gradio_record(gen: Generation) -> dict[str, Any]:
    return {
        "prompt": gen.prompt,
        "negative_prompt": gen.negative,
        "resolution": f"{gen.width} x {gen.height}",
        "guidance_scale": gen.cfg,
        "num_inference_steps": gen.steps,
        "seed": gen.seed,
        "sampler": "DPM++ 2M SDE Karras",
        "Model": gen.model,
        "Model hash": gen.model_hash,
        "use_resolution_binning": True,
    }


def write_gradio_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """A Gradio app's PNG: json.dumps of its settings in the `parameters` chunk."""
    return png_bytes(
        image, text=[("parameters", json.dumps(gradio_record(gen), ensure_ascii=False))]
    ), "png"


# ---------------------------------------------------------------- ComfyUI graphs that compute their
# text


def comfy_expansion_graph(gen: Generation, expand: bool = False) -> dict[str, Any]:
    """A newer model family's graph: the prompt is built by string nodes, a constant boolean switch
    picks it or an LLM's expansion of it (TextGenerate, whose output no file keeps), PreviewAny
    passes it on."""
    subject, _, style = gen.prompt.partition(", ")
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": f"{gen.model}.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "CLIPLoader",
            "inputs": {"clip_name": "qwen_2.5_vl_7b.safetensors", "type": "qwen_image"},
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "qwen_image_vae.safetensors"}},
        "10": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": subject}},
        "11": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": style}},
        "12": {
            "class_type": "StringConcatenate",
            "inputs": {"string_a": ["10", 0], "string_b": ["11", 0], "delimiter": ", "},
        },
        "13": {
            "class_type": "TextGenerate",
            "inputs": {
                "clip": ["2", 0],
                "prompt": ["12", 0],
                "max_length": 256,
                "sampling_mode": "on",
            },
        },
        "14": {"class_type": "PrimitiveBoolean", "inputs": {"value": expand}},
        "15": {
            "class_type": "ComfySwitchNode",
            "inputs": {"switch": ["14", 0], "on_false": ["12", 0], "on_true": ["13", 0]},
        },
        "16": {"class_type": "PreviewAny", "inputs": {"source": ["15", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": ["16", 0], "clip": ["2", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.negative, "clip": ["2", 0]}},
        "5": {
            "class_type": "EmptySD3LatentImage",
            "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1},
        },
        **sample_and_save(
            gen,
            ("8", "9", "17"),
            {
                "model": ["1", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "vae": ["3", 0],
            },
            ("euler", "simple"),
        ),
    }


def write_comfy_expansion_png(
    image: Image.Image, gen: Generation, expand: bool = False
) -> tuple[bytes, str]:
    api = comfy_expansion_graph(gen, expand)
    return png_bytes(
        image, text=[("prompt", json.dumps(api)), ("workflow", json.dumps(api_to_workflow(api)))]
    ), "png"


def write_comfy_llm_expanded_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """The same graph with its switch on the LLM: the encoded text is in no file."""
    return write_comfy_expansion_png(image, gen, expand=True)
