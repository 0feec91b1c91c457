"""Stealth PNG info: generation metadata hidden in the least significant bits of the alpha channel
(A1111/Forge's stealth_pnginfo extension, NovelAI). Layout: read column by column (x outer, y
inner), the bits spell a 15-byte signature (`stealth_pnginfo`, or `stealth_pngcomp` for gzip), a
32-bit big-endian payload length in bits, then the payload.

Only the alpha plane is kept, after the container's pixel bound has been checked; the payload is
bounded like every other metadata item."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image

SIGNATURES = {b"stealth_pnginfo": False, b"stealth_pngcomp": True}
_SIGNATURE_BITS = 15 * 8
_LENGTH_BITS = 32


def read_stealth_alpha(data: bytes, max_bytes: int) -> str | None:
    """The hidden text, or None when the alpha plane carries no stealth signature."""

    with Image.open(io.BytesIO(data)) as image:
        if "A" not in image.getbands():
            if "transparency" not in image.info:
                return None
            image = image.convert("RGBA")
        alpha = np.asarray(image.getchannel("A"), dtype=np.uint8)
    if alpha.size < _SIGNATURE_BITS + _LENGTH_BITS:
        return None
    bits = (alpha.T & 1).ravel()  # column-major, as the writers lay it out
    signature = np.packbits(bits[:_SIGNATURE_BITS]).tobytes()
    if signature not in SIGNATURES:
        return None
    length = int("".join(map(str, bits[_SIGNATURE_BITS : _SIGNATURE_BITS + _LENGTH_BITS])), 2)
    start = _SIGNATURE_BITS + _LENGTH_BITS
    if length <= 0 or length > len(bits) - start or length // 8 > max_bytes:
        raise ValueError(
            f"stealth metadata declares {length:,} bits, more than the image holds or the bound "
            "allows"
        )
    payload = np.packbits(bits[start : start + length]).tobytes()
    if SIGNATURES[signature]:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip
        payload = inflater.decompress(payload, max_bytes + 1)
        if len(payload) > max_bytes:
            raise ValueError(f"stealth metadata inflates past the {max_bytes:,}-byte bound")
    return payload.decode("utf-8", errors="replace")
