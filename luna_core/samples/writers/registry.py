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
from luna_core.samples.writers.comfyui_graphs import write_comfy_frontend_workflow_png
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
from luna_core.samples.writers.encoded import (
    comfy_expansion_graph,
    write_civitai_generator_jpeg,
    write_comfy_expansion_png,
    write_comfy_llm_expanded_png,
    write_gradio_png,
    write_invokeai_legacy_png,
)
from luna_core.samples.writers.other_tools import (
    fooocus_full_prompt,
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
from luna_core.samples.writers.savers import (
    hide_in_alpha,
    strip_png_text,
    write_a1111_stealth_png,
    write_civitai_jpeg,
    write_comfy_flux_png,
    write_comfy_qwen_png,
    write_comfy_rgthree_png,
    write_extended_formats_webp,
    write_image_saver_jpeg,
    write_image_saver_png,
    write_image_saver_webp,
    write_novelai_stealth_png,
    write_novelai_webp,
    write_ruined_fooocus_png,
    write_save_image_extended_jpeg,
    write_sdnext_png,
    write_stability_matrix_png,
)

__all__ = [
    "Generation",
    "a1111_infotext",
    "api_to_workflow",
    "ascii_tag",
    "comfy_custom_sampler_graph",
    "comfy_sdxl_hires_graph",
    "comfy_simple_graph",
    "insert_png_chunks",
    "jpeg_bytes",
    "png_bytes",
    "png_chunk",
    "tiff_block",
    "user_comment",
    "webp_bytes",
    "write_a1111_jpeg",
    "write_a1111_jpeg_plain",
    "write_a1111_png",
    "write_a1111_webp",
    "write_camera_jpeg",
    "write_comfyui_custom_png",
    "write_comfyui_png",
    "write_comfyui_webp",
    "write_comfyui_workflow_only_png",
    "write_draw_things_png",
    "write_easy_diffusion_jpeg",
    "write_easy_diffusion_png",
    "write_fooocus_jpeg",
    "write_fooocus_png",
    "write_forge_png",
    "write_invokeai_dream_png",
    "write_invokeai_png",
    "write_invokeai_v2_png",
    "write_novelai_png",
    "write_plain_png",
    "write_swarmui_jpeg",
    "write_swarmui_png",
    "FORMATS",
    "Writer",
    "hide_in_alpha",
    "strip_png_text",
    "SOURCES",
    "comfy_expansion_graph",
    "write_comfy_llm_expanded_png",
    "encoded_prompt",
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
    ("comfy_image_saver_png", write_image_saver_png, "ComfyUI"),
    ("comfy_image_saver_jpeg", write_image_saver_jpeg, "ComfyUI"),
    ("comfy_image_saver_webp", write_image_saver_webp, "ComfyUI"),
    ("comfy_save_image_extended_jpeg", write_save_image_extended_jpeg, "ComfyUI"),
    ("comfy_extended_formats_webp", write_extended_formats_webp, "ComfyUI"),
    ("comfy_flux_png", write_comfy_flux_png, "ComfyUI"),
    ("comfy_rgthree_subgraph_png", write_comfy_rgthree_png, "ComfyUI"),
    ("comfy_qwen_png", write_comfy_qwen_png, "ComfyUI"),
    ("comfy_frontend_workflow_png", write_comfy_frontend_workflow_png, "ComfyUI"),
    ("a1111_stealth_png", write_a1111_stealth_png, "AUTOMATIC1111"),
    ("novelai_stealth_png", write_novelai_stealth_png, "NovelAI"),
    ("novelai_webp", write_novelai_webp, "NovelAI"),
    ("civitai_jpeg", write_civitai_jpeg, "Civitai"),
    ("sdnext_png", write_sdnext_png, "SD.Next"),
    ("stability_matrix_png", write_stability_matrix_png, "Stability Matrix"),
    ("ruined_fooocus_png", write_ruined_fooocus_png, "RuinedFooocus"),
    ("invokeai_legacy_both", write_invokeai_legacy_png, "InvokeAI"),
    ("civitai_generator_jpeg", write_civitai_generator_jpeg, "Civitai"),
    ("gradio_png", write_gradio_png, "Gradio"),
    ("comfy_prompt_expansion_png", write_comfy_expansion_png, "ComfyUI"),
    ("plain_png", write_plain_png, "none"),
    ("camera_jpeg", write_camera_jpeg, "none"),
]

# Where each format's record must say it was read (generations.source).
SOURCES: dict[str, str | None] = {
    "a1111_png": "png:parameters",
    "forge_png": "png:parameters",
    "a1111_jpeg_utf16be": "exif:UserComment",
    "a1111_webp_utf16le": "exif:UserComment",
    "a1111_jpeg_plain": "exif:UserComment",
    "comfyui_png_sdxl_hires": "comfy:prompt",
    "comfyui_png_custom_sampler": "comfy:prompt",
    "comfyui_webp": "exif:Model",
    "comfyui_workflow_only": "comfy:workflow",
    "invokeai_v5": "png:invokeai_metadata",
    "invokeai_v2": "png:sd-metadata",
    "invokeai_dream": "png:Dream",
    "novelai": "png:Comment",
    "fooocus_png": "png:parameters",
    "fooocus_jpeg": "exif:UserComment",
    "swarmui_png": "png:parameters",
    "swarmui_jpeg": "exif:UserComment",
    "easy_diffusion_png": "png:text",
    "easy_diffusion_jpeg": "exif:UserComment",
    "draw_things": "xmp:UserComment",
    "comfy_image_saver_png": "comfy:prompt",
    "comfy_image_saver_jpeg": "exif:UserComment",
    "comfy_image_saver_webp": "exif:UserComment",
    "comfy_save_image_extended_jpeg": "exif:Model",
    "comfy_extended_formats_webp": "exif:UserComment",
    "comfy_flux_png": "comfy:prompt",
    "comfy_rgthree_subgraph_png": "comfy:prompt",
    "comfy_qwen_png": "comfy:prompt",
    "comfy_frontend_workflow_png": "comfy:workflow",
    "a1111_stealth_png": "png:parameters",
    "novelai_stealth_png": "png:Comment",
    "novelai_webp": "exif:UserComment",
    "civitai_jpeg": "exif:UserComment",
    "sdnext_png": "png:parameters",
    "stability_matrix_png": "comfy:prompt",
    "invokeai_legacy_both": "png:sd-metadata",
    "civitai_generator_jpeg": "exif:UserComment",
    "gradio_png": "png:parameters",
    "comfy_prompt_expansion_png": "comfy:prompt",
    "ruined_fooocus_png": "png:parameters",
    "plain_png": None,
    "camera_jpeg": None,
}


def encoded_prompt(kind: str, gen: Generation) -> str:
    """The prompt a format's file must be catalogued with: the text its generator encoded (Fooocus:
    the prompt and its expansion, each encoded, joined by BREAK in A1111's syntax), else the
    typed prompt."""
    if kind.startswith("fooocus"):
        return " BREAK ".join(fooocus_full_prompt(gen))
    return gen.prompt
