"""AUTOMATIC1111 and Forge: the infotext in a PNG tEXt chunk, or an EXIF UserComment in JPEG and
WebP."""

from __future__ import annotations

import hashlib
import json

from PIL import Image

from luna_core.samples.writers.common import (
    Generation,
    jpeg_bytes,
    png_bytes,
    tiff_block,
    user_comment,
    webp_bytes,
)

# ---------------------------------------------------------------- AUTOMATIC1111 / Forge


def a1111_infotext(gen: Generation, version: str = "v1.10.1") -> str:
    prompt = gen.prompt + "".join(f" <lora:{name}:{weight:g}>" for name, weight in gen.loras)
    lines = [prompt]
    if gen.negative:
        lines.append(f"Negative prompt: {gen.negative}")
    settings = [
        ("Steps", str(gen.steps)),
        ("Sampler", gen.sampler),
        ("Schedule type", gen.scheduler),
        ("CFG scale", f"{gen.cfg:g}"),
        ("Seed", str(gen.seed)),
        ("Size", f"{gen.width}x{gen.height}"),
        ("Model hash", gen.model_hash),
        ("Model", gen.model),
    ]
    if gen.loras:
        hashes = ", ".join(
            f"{name}: {hashlib.sha256(name.encode()).hexdigest()[:12]}" for name, _ in gen.loras
        )
        settings.append(("Lora hashes", json.dumps(hashes)))  # A1111 quotes values holding commas
    settings.append(
        (
            "Hashes",
            json.dumps(
                {"model": gen.model_hash, **{f"lora:{n}": "0123456789ab" for n, _ in gen.loras}}
            ),
        )
    )
    settings.append(("Version", version))
    lines.append(", ".join(f"{k}: {v}" for k, v in settings))
    return "\n".join(lines)


def write_a1111_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(image, text=[("parameters", a1111_infotext(gen))]), "png"


def write_forge_png(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    return png_bytes(
        image, text=[("parameters", a1111_infotext(gen, "f2.0.1v1.10.1-previous-636-gb835f24a"))]
    ), "png"


def write_a1111_jpeg(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    # A1111 saves JPEG EXIF with piexif: big-endian TIFF, UserComment 'UNICODE\0' + UTF-16BE.
    tiff = tiff_block(
        {}, {0x9286: (7, user_comment(a1111_infotext(gen), "utf-16-be"))}, big_endian=True
    )
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpg"


def write_a1111_webp(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    # Little-endian writers store the UTF-16 payload little-endian.
    tiff = tiff_block(
        {}, {0x9286: (7, user_comment(a1111_infotext(gen), "utf-16-le"))}, big_endian=False
    )
    return webp_bytes(image, exif=b"Exif\x00\x00" + tiff), "webp"


def write_a1111_jpeg_plain(image: Image.Image, gen: Generation) -> tuple[bytes, str]:
    tiff = tiff_block(
        {}, {0x9286: (7, user_comment(a1111_infotext(gen), "plain"))}, big_endian=False
    )
    return jpeg_bytes(image, [b"Exif\x00\x00" + tiff]), "jpeg"
