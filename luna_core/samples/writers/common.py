"""What every writer shares: the generation record and the byte-level PNG, TIFF/EXIF, JPEG and
WebP builders."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

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
    # the writer's prompt syntax: how its user types emphasis (luna_core.prompts.syntax)
    syntax: str = "literal"

    @property
    def prompt(self) -> str:
        return self.spec.render(self.syntax)

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


def png_bytes(
    image: Image.Image, text: list[tuple[str, str]] = (), itxt: list[tuple[str, str]] = ()
) -> bytes:
    info = PngInfo()
    for key, value in text:
        info.add_text(key, value)  # tEXt, or iTXt when the value is not Latin-1 (Pillow's rule)
    for key, value in itxt:
        info.add_itxt(key, value)
    out = io.BytesIO()
    image.save(out, "PNG", pnginfo=info)
    return out.getvalue()


def tiff_block(
    ifd0: dict[int, tuple[int, bytes]], exif_ifd: dict[int, tuple[int, bytes]], big_endian: bool
) -> bytes:
    """A TIFF structure (as EXIF holds it): IFD0, and an Exif sub-IFD when given. Values: (type,
    bytes)."""
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
