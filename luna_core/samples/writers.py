"""File writers that lay out generation metadata exactly as each tool does.

Each writer takes a picture and a `Generation` and returns the file's bytes and extension. The byte
layouts follow the tools' own writers: Pillow's PngInfo text chunks (A1111, ComfyUI, InvokeAI,
NovelAI, Fooocus, SwarmUI, Easy Diffusion), piexif's big-endian TIFF with a UTF-16BE UserComment
(A1111 JPEG), little-endian TIFF with UTF-16LE (other EXIF writers), ComfyUI's WebP IFD0 tags
(0x0110 'prompt:', 0x010F 'workflow:'), and Draw Things' XMP packet in an iTXt chunk.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from luna_core.samples.pictures import PromptSpec


@dataclass
class Generation:
    spec: PromptSpec
    seed: int
    steps: int = 30
    cfg: float = 7.0
    sampler: str = "DPM++ 2M"
    scheduler: str = "Karras"
    width: int = 1024
    height: int = 1024
    model: str = "sd_xl_base_1.0"
    model_hash: str = "31e35c80fc"
    loras: list[tuple[str, float]] = field(default_factory=list)

    @property
    def prompt(self) -> str:
        return self.spec.prompt

    @property
    def negative(self) -> str:
        return self.spec.negative


# ---------------------------------------------------------------- byte-level helpers


def png_chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def insert_png_chunks(png: bytes, chunks: list[bytes]) -> bytes:
    """Put chunks before the first IDAT, where writers put metadata."""
    idat = png.index(b"IDAT") - 4
    return png[:idat] + b"".join(chunks) + png[idat:]


def png_bytes(image: Image.Image, text: list[tuple[str, str]] = (), itxt: list[tuple[str, str]] = ()) -> bytes:
    info = PngInfo()
    for key, value in text:
        info.add_text(key, value)  # tEXt, or iTXt when the value is not Latin-1 (Pillow's rule)
    for key, value in itxt:
        info.add_itxt(key, value)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def tiff_block(ifd0: dict[int, tuple[int, bytes]], exif_ifd: dict[int, tuple[int, bytes]], big_endian: bool) -> bytes:
    """A TIFF structure (as EXIF holds it): IFD0, and an Exif sub-IFD when given. Values: (type, bytes)."""
    end = ">" if big_endian else "<"
    header = (b"MM" if big_endian else b"II") + struct.pack(end + "HI", 42, 8)
    entries0 = dict(ifd0)
    if exif_ifd:
        entries0[0x8769] = (4, b"\0\0\0\0")  # patched below
    ifd0_size = 2 + 12 * len(entries0) + 4
    exif_offset = 8 + ifd0_size
    exif_size = 2 + 12 * len(exif_ifd) + 4 if exif_ifd else 0
    data_offset = exif_offset + exif_size
    data = bytearray()

    def directory(entries: dict[int, tuple[int, bytes]]) -> bytes:
        nonlocal data
        out = struct.pack(end + "H", len(entries))
        for tag in sorted(entries):
            typ, value = entries[tag]
            if tag == 0x8769:
                value = struct.pack(end + "I", exif_offset)
            count = len(value) // {3: 2, 4: 4}.get(typ, 1)
            if len(value) <= 4:
                out += struct.pack(end + "HHI", tag, typ, count) + value.ljust(4, b"\0")
            else:
                out += struct.pack(end + "HHII", tag, typ, count, data_offset + len(data))
                data += value + (b"\0" if len(value) % 2 else b"")
        return out + b"\0\0\0\0"

    first = directory(entries0)
    second = directory(exif_ifd) if exif_ifd else b""
    return header + first + second + bytes(data)


def user_comment(text: str, charset: str) -> bytes:
    if charset == "utf-16-be":
        return b"UNICODE\x00" + text.encode("utf-16-be")
    if charset == "utf-16-le":
        return b"UNICODE\x00" + text.encode("utf-16-le")
    if charset == "ascii":
        return b"ASCII\x00\x00\x00" + text.encode("utf-8")
    return text.encode("utf-8")  # bare payload, no charset header


def jpeg_bytes(image: Image.Image, app_segments: list[bytes] = (), quality: int = 90) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    jpeg = out.getvalue()
    segments = b"".join(b"\xff\xe1" + struct.pack(">H", len(s) + 2) + s for s in app_segments)
    return jpeg[:2] + segments + jpeg[2:]


def webp_bytes(image: Image.Image, exif: bytes | None = None, xmp: str | None = None) -> bytes:
    out = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": 85}
    if exif is not None:
        kwargs["exif"] = exif
    if xmp is not None:
        kwargs["xmp"] = xmp.encode("utf-8")
    image.save(out, "WEBP", **kwargs)
    return out.getvalue()


def ascii_tag(text: str) -> tuple[int, bytes]:
    return 2, text.encode("utf-8") + b"\0"


# ---------------------------------------------------------------- AUTOMATIC1111 / Forge


def a1111_infotext(gen: Generation, version: str = "v1.10.1") -> str:
    prompt = gen.prompt + "".join(f" <lora:{name}:{weight:g}>" for name, weight in gen.loras)
    lines = [prompt]
    if gen.negative:
        lines.append(f"Negative prompt: {gen.negative}")
    settings = [
        ("Steps", str(gen.steps)), ("Sampler", gen.sampler), ("Schedule type", gen.scheduler),
        ("CFG scale", f"{gen.cfg:g}"), ("Seed", str(gen.seed)), ("Size", f"{gen.width}x{gen.height}"),
        ("Model hash", gen.model_hash), ("Model", gen.model),
    ]
    if gen.loras:
        hashes = ", ".join(f"{name}: {hashlib.sha256(name.encode()).hexdigest()[:12]}" for name, _ in gen.loras)
        settings.append(("Lora hashes", json.dumps(hashes)))  # A1111 quotes values holding commas
    settings.append(("Hashes", json.dumps({"model": gen.model_hash, **{f"lora:{n}": "0123456789ab" for n, _ in gen.loras}})))
    settings.append(("Version", version))
    lines.append(", ".join(f"{k}: {v}" for k, v in settings))
    return "\n".join(lines)


def write_a1111_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("parameters", a1111_infotext(gen))]), "png"


def write_forge_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("parameters", a1111_infotext(gen, "f2.0.1v1.10.1-previous-636-gb835f24a"))]), "png"


def write_a1111_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    # A1111 saves JPEG EXIF with piexif: big-endian TIFF, UserComment 'UNICODE\0' + UTF-16BE.
    tiff = tiff_block({}, {0x9286: (7, user_comment(a1111_infotext(gen), "utf-16-be"))}, big_endian=True)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


def write_a1111_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    # Little-endian writers store the UTF-16 payload little-endian.
    tiff = tiff_block({}, {0x9286: (7, user_comment(a1111_infotext(gen), "utf-16-le"))}, big_endian=False)
    return webp_bytes(image, exif=b"Exif\x00\x00" + tiff), "webp"


def write_a1111_jpeg_plain(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block({}, {0x9286: (7, user_comment(a1111_infotext(gen), "plain"))}, big_endian=False)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpeg"


# ---------------------------------------------------------------- ComfyUI

UI_LAYOUTS = {
    "CLIPTextEncode": ["text"],
    "CLIPTextEncodeSDXL": ["width", "height", "crop_w", "crop_h", "target_width", "target_height", "text_g", "text_l"],
    "KSampler": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
    "CheckpointLoaderSimple": ["ckpt_name"],
    "LoraLoader": ["lora_name", "strength_model", "strength_clip"],
    "EmptyLatentImage": ["width", "height", "batch_size"],
    "SaveImage": ["filename_prefix"],
}


def comfy_sdxl_hires_graph(gen: Generation) -> dict[str, Any]:
    """Checkpoint → LoRA → SDXL encoders → KSampler → latent upscale → second KSampler (hires fix)."""
    lora = gen.loras[0] if gen.loras else ("detail_tweaker_xl", 0.6)
    sampler = gen.sampler.lower().replace("++ ", "pp_").replace(" ", "_")
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{gen.model}.safetensors"}},
        "10": {"class_type": "LoraLoader", "inputs": {"lora_name": f"{lora[0]}.safetensors", "strength_model": lora[1],
                                                      "strength_clip": lora[1], "model": ["4", 0], "clip": ["4", 1]}},
        "6": {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "width": 4096, "height": 4096, "crop_w": 0, "crop_h": 0, "target_width": 4096, "target_height": 4096,
            "text_g": gen.prompt, "text_l": gen.prompt, "clip": ["10", 1]}},
        "7": {"class_type": "CLIPTextEncodeSDXL", "inputs": {
            "width": 4096, "height": 4096, "crop_w": 0, "crop_h": 0, "target_width": 4096, "target_height": 4096,
            "text_g": gen.negative, "text_l": gen.negative, "clip": ["10", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": gen.seed, "steps": gen.steps, "cfg": gen.cfg, "sampler_name": sampler, "scheduler": gen.scheduler.lower(),
            "denoise": 1.0, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "11": {"class_type": "LatentUpscaleBy", "inputs": {"upscale_method": "nearest-exact", "scale_by": 1.5, "samples": ["3", 0]}},
        "12": {"class_type": "KSampler", "inputs": {
            "seed": gen.seed + 1, "steps": 12, "cfg": gen.cfg, "sampler_name": sampler, "scheduler": gen.scheduler.lower(),
            "denoise": 0.45, "model": ["10", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["11", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["12", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def comfy_custom_sampler_graph(gen: Generation) -> dict[str, Any]:
    """SamplerCustomAdvanced fed by a CFGGuider whose positive is a ConditioningConcat of two encoders,
    one of which reads its text from a primitive string node."""
    subject, _, style = gen.prompt.partition(", ")
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{gen.model}.safetensors"}},
        "14": {"class_type": "PrimitiveStringMultiline", "inputs": {"value": subject}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": ["14", 0], "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": style, "clip": ["1", 1]}},
        "4": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["2", 0], "conditioning_from": ["3", 0]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.negative, "clip": ["1", 1]}},
        "6": {"class_type": "CFGGuider", "inputs": {"cfg": gen.cfg, "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0]}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": gen.seed}},
        "8": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}},
        "9": {"class_type": "BasicScheduler", "inputs": {"scheduler": "sgm_uniform", "steps": gen.steps, "denoise": 1.0, "model": ["1", 0]}},
        "10": {"class_type": "EmptyLatentImage", "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["7", 0], "guider": ["6", 0], "sampler": ["8", 0], "sigmas": ["9", 0], "latent_image": ["10", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["12", 0]}},
    }


def comfy_simple_graph(gen: Generation) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": f"{gen.model}.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.prompt, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": gen.negative, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": gen.width, "height": gen.height, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": gen.seed, "steps": gen.steps, "cfg": gen.cfg, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    }


def api_to_workflow(api: dict[str, Any]) -> dict[str, Any]:
    """The editor graph ComfyUI saves beside the API graph: nodes with widget values, and links."""
    nodes, links = [], []
    for node_id, node in api.items():
        layout = UI_LAYOUTS.get(node["class_type"], [])
        inputs = node["inputs"]
        widgets = [inputs.get(name, "randomize" if name == "control_after_generate" else None) for name in layout]
        ui_inputs = []
        for name, value in inputs.items():
            if isinstance(value, list) and len(value) == 2:
                link_id = len(links) + 1
                links.append([link_id, int(value[0]), value[1], int(node_id), len(ui_inputs), "*"])
                ui_inputs.append({"name": name, "type": "*", "link": link_id})
        nodes.append({"id": int(node_id), "type": node["class_type"], "pos": [0, 0], "size": [300, 100],
                      "inputs": ui_inputs, "widgets_values": widgets})
    return {"last_node_id": max(int(k) for k in api), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def write_comfyui_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    api = comfy_sdxl_hires_graph(gen)
    return png_bytes(image, text=[("prompt", json.dumps(api)), ("workflow", json.dumps(api_to_workflow(api)))]), "png"


def write_comfyui_custom_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    api = comfy_custom_sampler_graph(gen)
    return png_bytes(image, text=[("prompt", json.dumps(api)), ("workflow", json.dumps(api_to_workflow(api)))]), "png"


def write_comfyui_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    # ComfyUI's SaveAnimatedWEBP: Model (0x0110) = 'prompt:' + JSON, Make (0x010F) = 'workflow:' + JSON.
    api = comfy_simple_graph(gen)
    tiff = tiff_block({0x0110: ascii_tag("prompt:" + json.dumps(api)),
                       0x010F: ascii_tag("workflow:" + json.dumps(api_to_workflow(api)))}, {}, big_endian=False)
    return webp_bytes(image, exif=b"Exif\x00\x00" + tiff), "webp"


def write_comfyui_workflow_only_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("workflow", json.dumps(api_to_workflow(comfy_simple_graph(gen))))]), "png"


# ---------------------------------------------------------------- InvokeAI


def write_invokeai_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    lora = [{"model": {"key": "b1c2", "hash": "blake3:ab12", "name": n, "base": "sdxl", "type": "lora"}, "weight": w}
            for n, w in gen.loras]
    metadata = {
        "generation_mode": "sdxl_txt2img", "positive_prompt": gen.prompt, "negative_prompt": gen.negative,
        "width": gen.width, "height": gen.height, "seed": gen.seed, "rand_device": "cpu", "cfg_scale": gen.cfg,
        "cfg_rescale_multiplier": 0, "steps": gen.steps, "scheduler": "dpmpp_2m_k",
        "model": {"key": "a1b2", "hash": "blake3:" + gen.model_hash, "name": gen.model, "base": "sdxl", "type": "main"},
        "loras": lora, "positive_style_prompt": gen.prompt, "negative_style_prompt": gen.negative, "app_version": "5.6.0",
    }
    graph = {"id": "sdxl_graph", "nodes": {}, "edges": []}
    return png_bytes(image, text=[("invokeai_metadata", json.dumps(metadata)), ("invokeai_graph", json.dumps(graph))]), "png"


def write_invokeai_v2_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    prompt = f"{gen.prompt} [{gen.negative}]" if gen.negative else gen.prompt
    metadata = {
        "model": "stable diffusion", "model_weights": gen.model, "model_hash": gen.model_hash,
        "app_id": "invoke-ai/InvokeAI", "app_version": "2.3.5",
        "image": {"prompt": [{"prompt": prompt, "weight": 1.0}], "steps": gen.steps, "cfg_scale": gen.cfg,
                  "threshold": 0, "perlin": 0, "height": gen.height, "width": gen.width, "seed": gen.seed,
                  "seamless": False, "hires_fix": False, "type": "txt2img", "postprocessing": None,
                  "sampler": "k_lms", "variations": []},
    }
    return png_bytes(image, text=[("sd-metadata", json.dumps(metadata))]), "png"


def write_invokeai_dream_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    prompt = f"{gen.prompt} [{gen.negative}]" if gen.negative else gen.prompt
    dream = f'"{prompt}" -s {gen.steps} -S {gen.seed} -W {gen.width} -H {gen.height} -C {gen.cfg:g} -A k_lms'
    return png_bytes(image, text=[("Dream", dream)]), "png"


# ---------------------------------------------------------------- NovelAI, Fooocus, SwarmUI, Easy Diffusion, Draw Things


def write_novelai_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    comment = {"prompt": gen.prompt, "steps": gen.steps, "height": gen.height, "width": gen.width, "scale": gen.cfg,
               "uncond_scale": 1.0, "cfg_rescale": 0.0, "seed": gen.seed, "n_samples": 1, "noise_schedule": "native",
               "sampler": "k_euler_ancestral", "uc": gen.negative, "request_type": "PromptGenerateRequest"}
    return png_bytes(image, text=[
        ("Title", "AI generated image"), ("Description", gen.prompt), ("Software", "NovelAI"),
        ("Source", "Stable Diffusion XL C1E1DE52"), ("Generation time", "4.21"), ("Comment", json.dumps(comment)),
    ]), "png"


def fooocus_record(gen: Generation) -> dict[str, Any]:
    record = {
        "adm_guidance": "(1.5, 0.8, 0.3)", "base_model": f"{gen.model}.safetensors", "base_model_hash": gen.model_hash,
        "clip_skip": 2, "full_negative_prompt": [gen.negative], "full_prompt": [gen.prompt],
        "guidance_scale": gen.cfg, "metadata_scheme": "fooocus", "negative_prompt": gen.negative,
        "performance": "Speed", "prompt": gen.prompt, "prompt_expansion": gen.prompt + ", highly detailed",
        "refiner_model": "None", "refiner_switch": 0.5, "resolution": f"({gen.width}, {gen.height})",
        "sampler": "dpmpp_2m_sde_gpu", "scheduler": "karras", "seed": str(gen.seed), "sharpness": 2,
        "steps": gen.steps, "styles": "['Fooocus V2', 'Fooocus Enhance']", "vae": "Default (model)",
        "version": "Fooocus v2.5.5",
    }
    for i, (name, weight) in enumerate(gen.loras, start=1):
        record[f"lora_combined_{i}"] = f"{name}.safetensors : {weight:g}"
    return record


def write_fooocus_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("parameters", json.dumps(fooocus_record(gen))), ("fooocus_scheme", "fooocus")]), "png"


def write_fooocus_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block({0x0131: ascii_tag("Fooocus v2.5.5")},
                      {0x9286: (7, user_comment(json.dumps(fooocus_record(gen)), "plain"))}, big_endian=False)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


def swarm_record(gen: Generation) -> dict[str, Any]:
    return {"sui_image_params": {
        "prompt": gen.prompt, "negativeprompt": gen.negative, "model": f"OfficialStableDiffusion/{gen.model}",
        "seed": gen.seed, "steps": gen.steps, "cfgscale": gen.cfg, "aspectratio": "1:1", "width": gen.width,
        "height": gen.height, "sampler": "dpmpp_2m", "scheduler": "karras",
        "loras": [n for n, _ in gen.loras], "loraweights": [f"{w:g}" for _, w in gen.loras],
        "swarm_version": "0.9.5.2", "date": "2025-03-14", "generation_time": "0.02 (prep) and 4.31 (gen) seconds"},
        "sui_extra_data": {"date": "2025-03-14", "prep_time": "0.02 sec", "generation_time": "4.31 sec"}}


def write_swarmui_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("parameters", json.dumps(swarm_record(gen), indent=2))]), "png"


def write_swarmui_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block({}, {0x9286: (7, user_comment(json.dumps(swarm_record(gen)), "utf-16-le"))}, big_endian=False)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


def easy_diffusion_items(gen: Generation, title_case: bool) -> dict[str, str]:
    items = {
        "prompt": gen.prompt, "seed": str(gen.seed), "use_stable_diffusion_model": gen.model,
        "clip_skip": "False", "use_vae_model": "", "sampler_name": "dpmpp_2m", "width": str(gen.width),
        "height": str(gen.height), "num_inference_steps": str(gen.steps), "guidance_scale": f"{gen.cfg:g}",
        "negative_prompt": gen.negative, "use_lora_model": gen.loras[0][0] if gen.loras else "",
        "lora_alpha": f"{gen.loras[0][1]:g}" if gen.loras else "", "use_face_correction": "", "use_upscale": "",
    }
    if title_case:  # Easy Diffusion 3 writes display names
        names = {"prompt": "Prompt", "negative_prompt": "Negative Prompt", "seed": "Seed",
                 "use_stable_diffusion_model": "Stable Diffusion model", "sampler_name": "Sampler",
                 "num_inference_steps": "Steps", "guidance_scale": "Guidance Scale", "width": "Width", "height": "Height",
                 "use_lora_model": "LoRA model", "lora_alpha": "LoRA Strength", "clip_skip": "Clip Skip"}
        items = {names.get(k, k): v for k, v in items.items()}
    return items


def write_easy_diffusion_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=list(easy_diffusion_items(gen, title_case=False).items())), "png"


def write_easy_diffusion_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    payload = json.dumps(easy_diffusion_items(gen, title_case=True))
    tiff = tiff_block({}, {0x9286: (7, user_comment(payload, "plain"))}, big_endian=True)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpeg"


def draw_things_xmp(gen: Generation) -> str:
    from xml.sax.saxutils import escape

    record = {"c": gen.prompt, "uc": gen.negative, "seed": gen.seed, "steps": gen.steps, "scale": gen.cfg,
              "sampler": f"{gen.sampler} {gen.scheduler}", "model": f"{gen.model}_f16.ckpt",
              "size": f"{gen.width}x{gen.height}", "strength": 1,
              "lora": [{"file": f"{n}_lora_f16.ckpt", "weight": w} for n, w in gen.loras],
              "v2": {"aestheticScore": 6, "seed": gen.seed, "steps": gen.steps}}
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 6.0.0">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmlns:exif="http://ns.adobe.com/exif/1.0/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">\n'
        f'   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(gen.prompt)}</rdf:li></rdf:Alt></dc:description>\n'
        f'   <exif:UserComment><rdf:Alt><rdf:li xml:lang="x-default">{escape(json.dumps(record))}</rdf:li></rdf:Alt></exif:UserComment>\n'
        '   <xmp:CreatorTool>Draw Things</xmp:CreatorTool>\n'
        '  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="w"?>'
    )


def write_draw_things_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, itxt=[("XML:com.adobe.xmp", draw_things_xmp(gen))]), "png"


def write_plain_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image), "png"


def write_camera_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block({0x010F: ascii_tag("Canon"), 0x0110: ascii_tag("Canon EOS R5")}, {}, big_endian=False)
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


Writer = Callable[[Image.Image, Generation], tuple[bytes, str]]

# (format name, writer, generator the parser must report)
FORMATS: list[tuple[str, Writer, str]] = [
    ("a1111_png", write_a1111_png, "AUTOMATIC1111"),
    ("forge_png", write_forge_png, "Forge"),
    ("a1111_jpeg_utf16be", write_a1111_jpeg, "AUTOMATIC1111"),
    ("a1111_webp_utf16le", write_a1111_webp, "AUTOMATIC1111"),
    ("a1111_jpeg_plain", write_a1111_jpeg_plain, "AUTOMATIC1111"),
    ("comfyui_png_sdxl_hires", write_comfyui_png, "ComfyUI"),
    ("comfyui_png_custom_sampler", write_comfyui_custom_png, "ComfyUI"),
    ("comfyui_webp", write_comfyui_webp, "ComfyUI"),
    ("comfyui_workflow_only", write_comfyui_workflow_only_png, "ComfyUI"),
    ("invokeai_v5", write_invokeai_png, "InvokeAI"),
    ("invokeai_v2", write_invokeai_v2_png, "InvokeAI"),
    ("invokeai_dream", write_invokeai_dream_png, "InvokeAI"),
    ("novelai", write_novelai_png, "NovelAI"),
    ("fooocus_png", write_fooocus_png, "Fooocus"),
    ("fooocus_jpeg", write_fooocus_jpeg, "Fooocus"),
    ("swarmui_png", write_swarmui_png, "SwarmUI"),
    ("swarmui_jpeg", write_swarmui_jpeg, "SwarmUI"),
    ("easy_diffusion_png", write_easy_diffusion_png, "Easy Diffusion"),
    ("easy_diffusion_jpeg", write_easy_diffusion_jpeg, "Easy Diffusion"),
    ("draw_things", write_draw_things_png, "Draw Things"),
    ("plain_png", write_plain_png, "none"),
    ("camera_jpeg", write_camera_jpeg, "none"),
]
