"""Bounded readers for the image containers AI tools write: PNG, JPEG and WebP.

They read the container structure and the metadata it carries (text chunks, EXIF, XMP, comments)
without decoding a single pixel, so a library is catalogued at disk speed. Every size is bounded:
a hostile file can make them refuse, never allocate without limit.
"""

from __future__ import annotations

import zlib

from luna_core.containers.base import (
    PNG_SIGNATURE,
    ImageProbe,
    ProbeLimits,
    TextBudget,
    decode_text,
    decode_user_comment,
    sniff_format,
)
from luna_core.containers.exif_xmp import parse_exif, parse_xmp
from luna_core.containers.jpeg import probe_jpeg
from luna_core.containers.png import probe_png
from luna_core.containers.stealth import read_stealth_alpha
from luna_core.containers.webp import probe_webp
from luna_core.errors import BadFileError

__all__ = [
    "PNG_SIGNATURE",
    "ImageProbe",
    "ProbeLimits",
    "decode_text",
    "decode_user_comment",
    "parse_exif",
    "parse_xmp",
    "probe_image",
    "sniff_format",
]


def probe_image(data: bytes, limits: ProbeLimits = ProbeLimits()) -> ImageProbe:
    """Read an image file's structure and metadata from its bytes; raise BadFileError if
    unusable."""
    if not data:
        raise BadFileError("empty_file", "the file is empty (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise BadFileError(
            "not_an_image", f"content is not PNG, JPEG or WebP (it starts with {bytes(data[:8])!r})"
        )
    budget = TextBudget(limits)
    probe = {"png": probe_png, "jpeg": probe_jpeg, "webp": probe_webp}[fmt](data, budget)
    if probe.width <= 0 or probe.height <= 0:
        raise BadFileError(
            "corrupt", f"{fmt.upper()} declares an empty size {probe.width}x{probe.height}"
        )
    pixels = probe.width * probe.height
    if pixels > limits.max_pixels:
        raise BadFileError(
            "too_many_pixels",
            f"{probe.width}x{probe.height} = {pixels / 1e6:.0f} MP exceeds the "
            f"{limits.max_pixels / 1e6:.0f} MP"
            " bound (decompression-bomb guard, ProbeLimits.max_pixels)",
        )
    if probe.has_alpha and not probe.items and fmt in ("png", "webp"):
        # Only files with nothing else to say pay for a pixel decode (of the alpha plane's bits).
        try:
            hidden = read_stealth_alpha(data, limits.max_text_bytes)
        except (ValueError, OSError, zlib.error, EOFError) as exc:
            probe.warnings.append(f"stealth metadata in the alpha channel could not be read: {exc}")
            hidden = None
        if hidden is not None:
            probe.items["stealth:alpha"] = hidden
    return probe
