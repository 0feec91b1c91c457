"""Today's writers, laid out as their own source code lays them out: ComfyUI save nodes (Comfy Image
Saver's A1111 text with `Version: ComfyUI` beside the graph in PNG, alone in a piexif UserComment in
JPEG/WebP; IFD0 'prompt:'/'workflow:' tags; one UserComment JSON {prompt, workflow}), graphs with
newer text encoders and rgthree nodes, editor-only graphs from the newer frontend, stealth PNG info
in the alpha channel, and on-site generators (Civitai, SD.Next, Stability Matrix)."""

from __future__ import annotations

import gzip
import json

import numpy as np
from PIL import Image

from luna_core.samples.writers.a1111 import a1111_infotext
from luna_core.samples.writers.comfyui import api_to_workflow, comfy_simple_graph
from luna_core.samples.writers.comfyui_graphs import (
    _api_png,
    comfy_flux_graph,
    comfy_qwen_graph,
    comfy_rgthree_graph,
)
from luna_core.samples.writers.common import (
    Generation,
    ascii_tag,
    insert_png_chunks,
    jpeg_bytes,
    png_bytes,
    png_chunk,
    tiff_block,
    user_comment,
    webp_bytes,
)

_CIVITAI_SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "dpmpp_2m": "DPM++ 2M"}


def image_saver_text(gen: Generation, sampler: str = "dpmpp_2m", scheduler: str = "karras") -> str:
    """Comfy Image Saver's A1111-style text: Civitai sampler name (+ ' Karras'), `Version:
    ComfyUI`."""
    name = _CIVITAI_SAMPLERS.get(sampler, sampler) + (" Karras" if scheduler == "karras" else "")
    hashes = json.dumps({gen.model: gen.model_hash}, separators=(",", ":"))
    return (
        f"{gen.prompt}\nNegative prompt: {gen.negative}\n"
        f"Steps: {gen.steps}, Sampler: {name}, CFG scale: {gen.cfg}, Seed: {gen.seed}, "
        f"Size: {gen.width}x{gen.height}, Model hash: {gen.model_hash}, Model: {gen.model}, "
        f"Hashes: {hashes}, "
        "Version: ComfyUI"
    )


def _piexif_user_comment(text: str) -> bytes:
    """piexif.dump({"Exif": {UserComment: UserComment.dump(text, encoding="unicode")}}):
    big-endian TIFF."""
    return b"Exif\x00\x00" + tiff_block(
        {}, {0x9286: (7, user_comment(text, "utf-16-be"))}, big_endian=True
    )


def write_image_saver_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    api = comfy_simple_graph(gen)
    return png_bytes(
        image,
        text=[
            ("parameters", image_saver_text(gen)),
            ("prompt", json.dumps(api)),
            ("workflow", json.dumps(api_to_workflow(api))),
        ],
    ), "png"


def write_image_saver_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return jpeg_bytes(image, [_piexif_user_comment(image_saver_text(gen))]), "jpeg"


def write_image_saver_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return webp_bytes(image, exif=_piexif_user_comment(image_saver_text(gen))), "webp"


def write_save_image_extended_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """Save Image Extended's JPEG: piexif IFD0 Make = 'workflow:' + JSON, Model = 'prompt:' +
    JSON."""
    api = comfy_simple_graph(gen)
    tiff = tiff_block(
        {
            0x010F: ascii_tag("workflow:" + json.dumps(api_to_workflow(api))),
            0x0110: ascii_tag("prompt:" + json.dumps(api)),
        },
        {},
        big_endian=True,
    )
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpeg"


def write_extended_formats_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """Extended-format savers: one UserComment JSON object {"prompt": {...}, "workflow": {...}}."""
    api = comfy_simple_graph(gen)
    payload = json.dumps({"prompt": api, "workflow": api_to_workflow(api)})
    return webp_bytes(image, exif=_piexif_user_comment(payload)), "webp"


# ---------------------------------------------------------------- graphs of newer nodes and
# families


write_comfy_flux_png = _api_png(comfy_flux_graph)
write_comfy_rgthree_png = _api_png(comfy_rgthree_graph)
write_comfy_qwen_png = _api_png(comfy_qwen_graph)


# ---------------------------------------------------------------- stealth PNG info (alpha LSB)


def hide_in_alpha(image: Image.Image, text: str, compressed: bool = True) -> Image.Image:
    """The stealth_pnginfo layout: signature, 32-bit length in bits, payload; column by column."""
    payload = gzip.compress(text.encode("utf-8")) if compressed else text.encode("utf-8")
    signature = b"stealth_pngcomp" if compressed else b"stealth_pnginfo"
    bits = np.unpackbits(np.frombuffer(signature, dtype=np.uint8))
    length = np.array([int(b) for b in format(len(payload) * 8, "032b")], dtype=np.uint8)
    bits = np.concatenate([bits, length, np.unpackbits(np.frombuffer(payload, dtype=np.uint8))])
    rgba = np.array(image.convert("RGBA"))
    alpha = rgba[:, :, 3].T.copy().ravel()  # column-major
    if len(bits) > len(alpha):
        raise ValueError("the picture is too small to hide this text")
    alpha[: len(bits)] = (alpha[: len(bits)] & 0xFE) | bits
    rgba[:, :, 3] = alpha.reshape(rgba.shape[1], rgba.shape[0]).T
    return Image.fromarray(rgba, "RGBA")


def write_a1111_stealth_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """A1111/Forge with the stealth_pnginfo extension: the `parameters` chunk as usual, and the same
    text hidden in the alpha channel (which survives a site that strips text chunks:
    `strip_png_text`)."""
    text = a1111_infotext(gen)
    return png_bytes(hide_in_alpha(_opaque(image), text), text=[("parameters", text)]), "png"


def write_novelai_stealth_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """NovelAI: its text chunks, and the same chunks as one JSON object hidden in the alpha
    channel (gzip)."""
    comment = {
        "prompt": gen.prompt,
        "steps": gen.steps,
        "height": gen.height,
        "width": gen.width,
        "scale": gen.cfg,
        "seed": gen.seed,
        "sampler": "k_euler_ancestral",
        "uc": gen.negative,
        "noise_schedule": "karras",
    }
    chunks = {
        "Title": "NovelAI generated image",
        "Description": gen.prompt,
        "Software": "NovelAI",
        "Source": "NovelAI Diffusion V4.5 4BDE2A90",
        "Generation time": "5.2",
        "Comment": json.dumps(comment),
    }
    return png_bytes(
        hide_in_alpha(_opaque(image), json.dumps(chunks)), text=list(chunks.items())
    ), "png"


def strip_png_text(data: bytes) -> bytes:
    """The PNG without its text chunks, as image sites serve uploads: only the pixels' own bits
    remain."""
    out, pos = bytearray(data[:8]), 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out += data[pos:end]
        pos = end
    return bytes(out)


def write_novelai_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """NovelAI's WebP: the short prompt as EXIF ImageDescription, every PNG text chunk as one JSON
    object in the UserComment."""
    comment = {
        "prompt": gen.prompt,
        "steps": gen.steps,
        "height": gen.height,
        "width": gen.width,
        "scale": gen.cfg,
        "seed": gen.seed,
        "sampler": "k_euler_ancestral",
        "uc": gen.negative,
        "noise_schedule": "karras",
    }
    chunks = {
        "Title": "NovelAI generated image",
        "Description": gen.prompt,
        "Software": "NovelAI",
        "Source": "NovelAI Diffusion V4.5 4BDE2A90",
        "Generation time": "5.2",
        "Comment": json.dumps(comment),
    }
    tiff = tiff_block(
        {0x010E: ascii_tag(gen.prompt)},
        {0x9286: (7, user_comment(json.dumps(chunks), "utf-16-be"))},
        big_endian=True,
    )
    return webp_bytes(image, exif=b"Exif\x00\x00" + tiff), "webp"


def _opaque(image: Image.Image) -> Image.Image:
    # Stealth needs room: enough pixels for the payload's bits (a real render has millions).
    big = image.convert("RGBA").resize((max(image.width, 160), max(image.height, 160)))
    return big


# ---------------------------------------------------------------- on-site and app generators


def write_civitai_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """Civitai's generator: A1111 text in a UTF-16 UserComment, with its resource list and
    metadata JSON."""
    resources = [
        {
            "type": "checkpoint",
            "modelVersionId": 456194,
            "modelName": gen.model,
            "modelVersionName": "v9",
        }
    ]
    resources += [
        {
            "type": "lora",
            "weight": weight,
            "modelVersionId": 62833,
            "modelName": name,
            "modelVersionName": "v1",
        }
        for name, weight in gen.loras
    ]
    text = (
        f"{gen.prompt}\nNegative prompt: {gen.negative}\n"
        f"Steps: {gen.steps}, CFG scale: {gen.cfg:g}, Sampler: {gen.sampler}, Seed: {gen.seed}, "
        f"Size: {gen.width}x{gen.height}, Clip skip: 2, "
        f"Civitai resources: {json.dumps(resources, separators=(',', ':'))}, "
        f"Civitai metadata: {json.dumps({'remixOfId': 1234}, separators=(',', ':'))}"
    )
    return jpeg_bytes(image, [_piexif_user_comment(text)]), "jpeg"


def write_sdnext_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """SD.Next: A1111-style text whose settings name the app (`App: SD.Next`)."""
    text = a1111_infotext(gen, version="2d71b7e").replace(
        ", Version: 2d71b7e", ", App: SD.Next, Version: 2d71b7e, Pipeline: StableDiffusionXL"
    )
    return png_bytes(image, text=[("parameters", text)]), "png"


STABILITY_MATRIX_COMMENT = "# 参考: テスト"


def write_stability_matrix_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """Stability Matrix's inference: the prompt as written (its `#` comment lines included) in A1111
    `parameters` (UTF-8 bytes in a tEXt chunk, which the PNG spec calls Latin-1) and in its JSON
    twin `parameters-json`; the ComfyUI graph it ran, whose text has the comments stripped; its
    `smproj`."""
    written = f"{STABILITY_MATRIX_COMMENT}\n{gen.prompt}"
    params = {
        "PositivePrompt": written,
        "NegativePrompt": gen.negative,
        "Steps": gen.steps,
        "CfgScale": gen.cfg,
        "Width": gen.width,
        "Height": gen.height,
        "Seed": gen.seed,
        "ModelName": gen.model,
        "ModelHash": gen.model_hash,
        "Sampler": "dpmpp_2m",
        "Scheduler": "karras",
    }
    project = {"Version": 2, "Type": "TextToImage", "State": {"Modules": []}}
    api = comfy_simple_graph(gen)
    text = a1111_infotext(gen, version="StabilityMatrix 2.12").replace(gen.prompt, written, 1)
    png = png_bytes(
        image,
        text=[
            ("parameters-json", json.dumps(params)),
            ("smproj", json.dumps(project)),
            ("prompt", json.dumps(api)),
        ],
    )
    return insert_png_chunks(
        png, [png_chunk(b"tEXt", b"parameters\x00" + text.encode("utf-8"))]
    ), "png"


def write_ruined_fooocus_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    """RuinedFooocus: json.dumps of its record in the PNG `parameters` chunk."""
    record = {
        "Prompt": gen.prompt,
        "Negative": gen.negative,
        "steps": gen.steps,
        "cfg": gen.cfg,
        "width": gen.width,
        "height": gen.height,
        "seed": gen.seed,
        "sampler_name": "dpmpp_2m_sde_gpu",
        "scheduler": "karras",
        "base_model_name": f"{gen.model}.safetensors",
        "base_model_hash": gen.model_hash[:8],
        "loras": [["4852686128", f"{weight} - {name}"] for name, weight in gen.loras],
        "start_step": 0,
        "denoise": None,
        "clip_skip": 1,
        "software": "RuinedFooocus",
    }
    return png_bytes(image, text=[("parameters", json.dumps(record))]), "png"
