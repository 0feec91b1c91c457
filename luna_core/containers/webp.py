"""WebP: RIFF chunks; the size from VP8/VP8L/VP8X, EXIF and XMP chunks."""

from __future__ import annotations

import struct

from luna_core.containers.base import ImageProbe, TextBudget, decode_text
from luna_core.containers.exif_xmp import parse_exif, parse_xmp
from luna_core.errors import BadFileError


def probe_webp(data: bytes, budget: TextBudget) -> ImageProbe:
    probe = ImageProbe("webp", 0, 0)
    (riff_size,) = struct.unpack("<I", data[4:8])
    size = len(data)
    if riff_size + 8 > size:
        raise BadFileError("truncated", f"WebP declares {riff_size + 8:,} bytes, file has {size:,}")
    end_all = riff_size + 8
    pos = 12
    has_image = False
    for _ in range(budget.limits.max_chunks):
        if pos + 8 > end_all:
            break
        fourcc = data[pos : pos + 4]
        (length,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end > end_all:
            name = fourcc.decode("latin-1", "replace")
            raise BadFileError("truncated", f"WebP chunk {name!r} runs past the end of the file")
        body = (
            data[start:end] if fourcc in (b"EXIF", b"XMP ") else data[start : min(end, start + 16)]
        )
        if fourcc == b"VP8X" and length >= 10:
            probe.has_alpha = bool(body[0] & 0x10)
            probe.width = 1 + int.from_bytes(body[4:7], "little")
            probe.height = 1 + int.from_bytes(body[7:10], "little")
        elif fourcc == b"VP8 " and length >= 10:
            has_image = True
            if probe.width == 0:
                if body[3:6] != b"\x9d\x01\x2a":
                    raise BadFileError("corrupt", "WebP VP8 frame lacks its start code")
                w, h = struct.unpack("<HH", body[6:10])
                probe.width, probe.height = w & 0x3FFF, h & 0x3FFF
        elif fourcc == b"VP8L" and length >= 5:
            has_image = True
            if probe.width == 0:
                if body[0] != 0x2F:
                    raise BadFileError("corrupt", "WebP lossless frame lacks its signature")
                bits = int.from_bytes(body[1:5], "little")
                probe.width, probe.height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
                probe.has_alpha = probe.has_alpha or bool(bits >> 28 & 1)
        elif fourcc in (b"ANMF", b"ALPH"):
            has_image = has_image or fourcc == b"ANMF"
        elif fourcc == b"EXIF":
            budget.take("EXIF", length)
            exif = body[6:] if body.startswith(b"Exif\x00\x00") else body
            probe.items.update(parse_exif(exif, probe.warnings))
        elif fourcc == b"XMP ":
            budget.take("XMP", length)
            probe.items.update(parse_xmp(decode_text(body, "XMP", probe.warnings), probe.warnings))
        pos = end + (length & 1)
    if not has_image:
        raise BadFileError("corrupt", "WebP holds no image frame")
    return probe


# ---------------------------------------------------------------- EXIF (TIFF structure)
