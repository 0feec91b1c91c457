"""InvokeAI, NovelAI, Fooocus, SwarmUI, Easy Diffusion, Draw Things, and files with no generation
metadata."""

from __future__ import annotations

import json
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image

from luna_core.samples.writers.common import (
    Generation,
    ascii_tag,
    jpeg_bytes,
    png_bytes,
    tiff_block,
    user_comment,
)
from luna_core.samples.writers.encoded import dream_line

# ---------------------------------------------------------------- InvokeAI


def write_invokeai_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    lora = [
        {
            "model": {
                "key": "b1c2",
                "hash": "blake3:ab12",
                "name": n,
                "base": "sdxl",
                "type": "lora",
            },
            "weight": w,
        }
        for n, w in gen.loras
    ]
    metadata = {
        "generation_mode": "sdxl_txt2img",
        "positive_prompt": gen.prompt,
        "negative_prompt": gen.negative,
        "width": gen.width,
        "height": gen.height,
        "seed": gen.seed,
        "rand_device": "cpu",
        "cfg_scale": gen.cfg,
        "cfg_rescale_multiplier": 0,
        "steps": gen.steps,
        "scheduler": "dpmpp_2m_k",
        "model": {
            "key": "a1b2",
            "hash": "blake3:" + gen.model_hash,
            "name": gen.model,
            "base": "sdxl",
            "type": "main",
        },
        "loras": lora,
        "positive_style_prompt": gen.prompt,
        "negative_style_prompt": gen.negative,
        "app_version": "5.6.0",
    }
    graph = {"id": "sdxl_graph", "nodes": {}, "edges": []}
    return png_bytes(
        image,
        text=[("invokeai_metadata", json.dumps(metadata)), ("invokeai_graph", json.dumps(graph))],
    ), "png"


def write_invokeai_v2_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    prompt = f"{gen.prompt} [{gen.negative}]" if gen.negative else gen.prompt
    metadata = {
        "model": "stable diffusion",
        "model_weights": gen.model,
        "model_hash": gen.model_hash,
        "app_id": "invoke-ai/InvokeAI",
        "app_version": "2.3.5",
        "image": {
            "prompt": [{"prompt": prompt, "weight": 1.0}],
            "steps": gen.steps,
            "cfg_scale": gen.cfg,
            "threshold": 0,
            "perlin": 0,
            "height": gen.height,
            "width": gen.width,
            "seed": gen.seed,
            "seamless": False,
            "hires_fix": False,
            "type": "txt2img",
            "postprocessing": None,
            "sampler": "k_lms",
            "variations": [],
        },
    }
    return png_bytes(image, text=[("sd-metadata", json.dumps(metadata))]), "png"


def write_invokeai_dream_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("Dream", dream_line(gen))]), "png"


# ---------------------------------------------------------------- NovelAI, Fooocus, SwarmUI, Easy
# Diffusion, Draw Things


def write_novelai_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    comment = {
        "prompt": gen.prompt,
        "steps": gen.steps,
        "height": gen.height,
        "width": gen.width,
        "scale": gen.cfg,
        "uncond_scale": 1.0,
        "cfg_rescale": 0.0,
        "seed": gen.seed,
        "n_samples": 1,
        "noise_schedule": "native",
        "sampler": "k_euler_ancestral",
        "uc": gen.negative,
        "request_type": "PromptGenerateRequest",
    }
    return png_bytes(
        image,
        text=[
            ("Title", "AI generated image"),
            ("Description", gen.prompt),
            ("Software", "NovelAI"),
            ("Source", "Stable Diffusion XL C1E1DE52"),
            ("Generation time", "4.21"),
            ("Comment", json.dumps(comment)),
        ],
    ), "png"


def fooocus_full_prompt(gen: Generation) -> list[str]:
    """What Fooocus encodes: the (styled) prompt, then its "Fooocus V2" expansion
    (async_worker.py)."""
    return [gen.prompt, gen.prompt + ", highly detailed"]


def fooocus_record(gen: Generation) -> dict[str, Any]:
    record = {
        "adm_guidance": "(1.5, 0.8, 0.3)",
        "base_model": f"{gen.model}.safetensors",
        "base_model_hash": gen.model_hash,
        "clip_skip": 2,
        "full_negative_prompt": [gen.negative],
        "full_prompt": fooocus_full_prompt(gen),
        "guidance_scale": gen.cfg,
        "metadata_scheme": "fooocus",
        "negative_prompt": gen.negative,
        "performance": "Speed",
        "prompt": gen.prompt,
        "prompt_expansion": fooocus_full_prompt(gen)[-1],
        "refiner_model": "None",
        "refiner_switch": 0.5,
        "resolution": f"({gen.width}, {gen.height})",
        "sampler": "dpmpp_2m_sde_gpu",
        "scheduler": "karras",
        "seed": str(gen.seed),
        "sharpness": 2,
        "steps": gen.steps,
        "styles": "['Fooocus V2', 'Fooocus Enhance']",
        "vae": "Default (model)",
        "version": "Fooocus v2.5.5",
    }
    for i, (name, weight) in enumerate(gen.loras, start=1):
        record[f"lora_combined_{i}"] = f"{name}.safetensors : {weight:g}"
    return record


def write_fooocus_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(
        image, text=[("parameters", json.dumps(fooocus_record(gen))), ("fooocus_scheme", "fooocus")]
    ), "png"


def write_fooocus_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block(
        {0x0131: ascii_tag("Fooocus v2.5.5")},
        {0x9286: (7, user_comment(json.dumps(fooocus_record(gen)), "plain"))},
        big_endian=False,
    )
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


def swarm_record(gen: Generation) -> dict[str, Any]:
    return {
        "sui_image_params": {
            "prompt": gen.prompt,
            "negativeprompt": gen.negative,
            "model": f"OfficialStableDiffusion/{gen.model}",
            "seed": gen.seed,
            "steps": gen.steps,
            "cfgscale": gen.cfg,
            "aspectratio": "1:1",
            "width": gen.width,
            "height": gen.height,
            "sampler": "dpmpp_2m",
            "scheduler": "karras",
            "loras": [n for n, _ in gen.loras],
            "loraweights": [f"{w:g}" for _, w in gen.loras],
            "swarm_version": "0.9.5.2",
            "date": "2025-03-14",
            "generation_time": "0.02 (prep) and 4.31 (gen) seconds",
        },
        "sui_extra_data": {
            "date": "2025-03-14",
            "prep_time": "0.02 sec",
            "generation_time": "4.31 sec",
        },
    }


def write_swarmui_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("parameters", json.dumps(swarm_record(gen), indent=2))]), "png"


def write_swarmui_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block(
        {},
        {0x9286: (7, user_comment(json.dumps(swarm_record(gen)), "utf-16-le"))},
        big_endian=False,
    )
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


def easy_diffusion_items(gen: Generation, title_case: bool) -> dict[str, str]:
    items = {
        "prompt": gen.prompt,
        "seed": str(gen.seed),
        "use_stable_diffusion_model": gen.model,
        "clip_skip": "False",
        "use_vae_model": "",
        "sampler_name": "dpmpp_2m",
        "width": str(gen.width),
        "height": str(gen.height),
        "num_inference_steps": str(gen.steps),
        "guidance_scale": f"{gen.cfg:g}",
        "negative_prompt": gen.negative,
        "use_lora_model": gen.loras[0][0] if gen.loras else "",
        "lora_alpha": f"{gen.loras[0][1]:g}" if gen.loras else "",
        "use_face_correction": "",
        "use_upscale": "",
    }
    if title_case:  # Easy Diffusion 3 writes display names
        names = {
            "prompt": "Prompt",
            "negative_prompt": "Negative Prompt",
            "seed": "Seed",
            "use_stable_diffusion_model": "Stable Diffusion model",
            "sampler_name": "Sampler",
            "num_inference_steps": "Steps",
            "guidance_scale": "Guidance Scale",
            "width": "Width",
            "height": "Height",
            "use_lora_model": "LoRA model",
            "lora_alpha": "LoRA Strength",
            "clip_skip": "Clip Skip",
        }
        items = {names.get(k, k): v for k, v in items.items()}
    return items


def write_easy_diffusion_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=list(easy_diffusion_items(gen, title_case=False).items())), "png"


def write_easy_diffusion_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    payload = json.dumps(easy_diffusion_items(gen, title_case=True))
    tiff = tiff_block({}, {0x9286: (7, user_comment(payload, "plain"))}, big_endian=True)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpeg"


def draw_things_xmp(gen: Generation) -> str:
    record = {
        "c": gen.prompt,
        "uc": gen.negative,
        "seed": gen.seed,
        "steps": gen.steps,
        "scale": gen.cfg,
        "sampler": f"{gen.sampler} {gen.scheduler}",
        "model": f"{gen.model}_f16.ckpt",
        "size": f"{gen.width}x{gen.height}",
        "strength": 1,
        "lora": [{"file": f"{n}_lora_f16.ckpt", "weight": w} for n, w in gen.loras],
        "v2": {"aestheticScore": 6, "seed": gen.seed, "steps": gen.steps},
    }
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 6.0.0">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">\n'
        "   <dc:description><rdf:Alt><rdf:li "
        f'xml:lang="x-default">{escape(gen.prompt)}</rdf:li></rdf:Alt></dc:description>\n'
        '   <exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">'
        f"{escape(json.dumps(record))}</rdf:li></rdf:Alt></exif:UserComment>\n"
        "   <xmp:CreatorTool>Draw Things</xmp:CreatorTool>\n"
        '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'
    )


def write_draw_things_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, itxt=[("XML:com.adobe.xmp", draw_things_xmp(gen))]), "png"


def write_plain_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image), "png"


def write_camera_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block(
        {0x010F: ascii_tag("Canon"), 0x0110: ascii_tag("Canon EOS R5")}, {}, big_endian=False
    )
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"
