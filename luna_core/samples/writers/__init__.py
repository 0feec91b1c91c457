"""File writers that lay out generation metadata exactly as each tool does.

Each writer takes a picture and a `Generation` and returns the file's bytes and extension. The byte
layouts follow the tools' own writers: Pillow's PngInfo text chunks (A1111, ComfyUI, InvokeAI,
NovelAI, Fooocus, SwarmUI, Easy Diffusion), piexif's big-endian TIFF with a UTF-16BE UserComment
(A1111 JPEG), little-endian TIFF with UTF-16LE (other EXIF writers), ComfyUI's WebP IFD0 tags
(0x0110 'prompt:', 0x010F 'workflow:'), and Draw Things' XMP packet in an iTXt chunk.
"""

from __future__ import annotations

from typing import Callable

from PIL import Image

from luna_core.samples.writers.a1111 import (
    a1111_infotext,
    write_a1111_jpeg,
    write_a1111_jpeg_plain,
    write_a1111_png,
    write_a1111_webp,
    write_forge_png,
)
from luna_core.samples.writers.comfyui import (
    api_to_workflow,
    comfy_custom_sampler_graph,
    comfy_sdxl_hires_graph,
    comfy_simple_graph,
    write_comfyui_custom_png,
    write_comfyui_png,
    write_comfyui_webp,
    write_comfyui_workflow_only_png,
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
from luna_core.samples.writers.other_tools import (
    write_camera_jpeg,
    write_draw_things_png,
    write_easy_diffusion_jpeg,
    write_easy_diffusion_png,
    write_fooocus_jpeg,
    write_fooocus_png,
    write_invokeai_dream_png,
    write_invokeai_png,
    write_invokeai_v2_png,
    write_novelai_png,
    write_plain_png,
    write_swarmui_jpeg,
    write_swarmui_png,
)

__all__ = [
    "Generation", "a1111_infotext", "api_to_workflow", "ascii_tag", "comfy_custom_sampler_graph",
    "comfy_sdxl_hires_graph", "comfy_simple_graph", "insert_png_chunks", "jpeg_bytes", "png_bytes", "png_chunk",
    "tiff_block", "user_comment", "webp_bytes", "write_a1111_jpeg", "write_a1111_jpeg_plain", "write_a1111_png",
    "write_a1111_webp", "write_camera_jpeg", "write_comfyui_custom_png", "write_comfyui_png", "write_comfyui_webp",
    "write_comfyui_workflow_only_png", "write_draw_things_png", "write_easy_diffusion_jpeg",
    "write_easy_diffusion_png", "write_fooocus_jpeg", "write_fooocus_png", "write_forge_png",
    "write_invokeai_dream_png", "write_invokeai_png", "write_invokeai_v2_png", "write_novelai_png", "write_plain_png",
    "write_swarmui_jpeg", "write_swarmui_png", "FORMATS", "Writer",
]

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
