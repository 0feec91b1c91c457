"""JPEG: markers walked up to the scan; EXIF (APP1), XMP (APP1) and comments (COM)."""

from __future__ import annotations

import struct

from luna_core.containers.base import ImageProbe, TextBudget, decode_text
from luna_core.containers.exif_xmp import parse_exif, parse_xmp
from luna_core.errors import BadFileError

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"


def probe_jpeg(data: bytes, budget: TextBudget) -> ImageProbe:
    probe = ImageProbe("jpeg", 0, 0)
    size = len(data)
    pos = 2
    for _ in range(budget.limits.max_chunks):
        while pos < size and data[pos] == 0xFF and pos + 1 < size and data[pos + 1] == 0xFF:
            pos += 1  # fill bytes
        if pos + 2 > size:
            raise BadFileError("truncated", f"JPEG ends in its header at byte {pos:,}")
        if data[pos] != 0xFF:
            raise BadFileError("corrupt", f"JPEG marker expected at byte {pos:,}")
        marker = data[pos + 1]
        if marker == 0xD9:
            raise BadFileError("corrupt", "JPEG ends (EOI) before any image data")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        if pos + 4 > size:
            raise BadFileError("truncated", f"JPEG ends in a segment header at byte {pos:,}")
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        start, end = pos + 4, pos + 2 + length
        if length < 2 or end > size:
            raise BadFileError(
                "truncated", f"JPEG segment 0x{marker:02X} runs past the end of the file"
            )
        body = data[start:end]
        if marker in _JPEG_SOF:
            if len(body) < 5:
                raise BadFileError("corrupt", "JPEG frame header is too short")
            probe.height, probe.width = struct.unpack(">HH", body[1:5])
        elif marker == 0xE1 and body.startswith(b"Exif\x00\x00"):
            budget.take("EXIF", len(body))
            probe.items.update(parse_exif(body[6:], probe.warnings))
        elif marker == 0xE1 and body.startswith(_XMP_JPEG_PREFIX):
            budget.take("XMP", len(body))
            xmp = decode_text(body[len(_XMP_JPEG_PREFIX) :], "XMP", probe.warnings)
            probe.items.update(parse_xmp(xmp, probe.warnings))
        elif marker == 0xFE:
            budget.take("JPEG comment", len(body))
            probe.items.setdefault(
                "jpeg:comment", decode_text(body, "JPEG comment", probe.warnings)
            )
        elif marker == 0xDA:
            if probe.width == 0:
                raise BadFileError("corrupt", "JPEG image data starts before a frame header")
            # 0xFFD9 cannot occur inside entropy-coded data (0xFF is stuffed), so its presence
            # after the scan start tells a complete file from a cut one without decoding.
            if data.find(b"\xff\xd9", end) < 0:
                raise BadFileError(
                    "truncated", f"JPEG image data is cut off (no end marker in {size:,} bytes)"
                )
            return probe
        pos = end
    raise BadFileError("corrupt", f"JPEG has more than {budget.limits.max_chunks:,} segments")


# ---------------------------------------------------------------- WebP
