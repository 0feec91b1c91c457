"""PNG: chunks walked with CRC checks; tEXt, zTXt (inflated within the budget), iTXt, eXIf."""

from __future__ import annotations

import struct
import zlib

from luna_core.containers.base import PNG_SIGNATURE, ImageProbe, TextBudget, decode_text
from luna_core.containers.exif_xmp import parse_exif, parse_xmp
from luna_core.errors import BadFileError


def probe_png(data: bytes, budget: TextBudget) -> ImageProbe:
    probe = ImageProbe("png", 0, 0)
    size = len(data)
    pos = len(PNG_SIGNATURE)
    seen_ihdr = seen_idat = seen_iend = False
    for _ in range(budget.limits.max_chunks):
        if pos == size:
            break
        if pos + 8 > size:
            raise BadFileError(
                "truncated", f"PNG ends inside a chunk header at byte {pos:,} of {size:,}"
            )
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > size:
            name = ctype.decode("latin-1", "replace")
            raise BadFileError(
                "truncated",
                f"PNG ends inside chunk {name} (needs {end + 4:,} bytes, file has {size:,})",
            )
        # Slice only what is read: IDAT bodies are most of the file and never needed here.
        body = data[start:end] if ctype in (b"IHDR", b"tEXt", b"zTXt", b"iTXt", b"eXIf") else b""
        if ctype == b"IHDR":
            if length != 13:
                raise BadFileError("corrupt", f"PNG IHDR chunk has length {length}, not 13")
            _check_crc(data, pos, end, "IHDR")
            probe.width, probe.height = struct.unpack(">II", body[:8])
            probe.has_alpha = body[9] in (4, 6)  # grey + alpha, RGBA
            seen_ihdr = True
        elif not seen_ihdr:
            raise BadFileError("corrupt", "PNG does not start with an IHDR chunk")
        elif ctype == b"IDAT":
            seen_idat = True
        elif ctype == b"tRNS":
            probe.has_alpha = True
        elif ctype == b"IEND":
            seen_iend = True
            pos = end + 4
            break
        elif ctype in (b"tEXt", b"zTXt", b"iTXt"):
            budget.take(ctype.decode(), length)
            if _crc_ok(data, pos, end):
                _read_png_text(ctype, body, probe, budget)
            else:
                probe.warnings.append(f"PNG {ctype.decode()} chunk with a bad CRC skipped")
        elif ctype == b"eXIf":
            budget.take("eXIf", length)
            probe.items.update(parse_exif(body, probe.warnings))
        pos = end + 4
    else:
        raise BadFileError("corrupt", f"PNG has more than {budget.limits.max_chunks:,} chunks")
    if not seen_ihdr:
        raise BadFileError("truncated", "PNG has a signature and nothing else")
    if not seen_idat:
        raise BadFileError(
            "truncated" if not seen_iend else "corrupt", "PNG holds no image data (IDAT)"
        )
    if not seen_iend:
        raise BadFileError("truncated", f"PNG ends after {size:,} bytes without an IEND chunk")
    if pos < size:
        probe.warnings.append(f"{size - pos:,} bytes after the PNG IEND chunk")
    return probe


def _crc_ok(data: bytes, pos: int, end: int) -> bool:
    (stored,) = struct.unpack(">I", data[end : end + 4])
    return zlib.crc32(data[pos + 4 : end]) == stored


def _check_crc(data: bytes, pos: int, end: int, name: str) -> None:
    if not _crc_ok(data, pos, end):
        raise BadFileError("corrupt", f"PNG {name} chunk fails its CRC check")


def _inflate_bounded(compressed: bytes, key: str, budget: TextBudget) -> bytes:
    limit = budget.limits.max_text_bytes
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise BadFileError(
            "corrupt", f"compressed metadata item {key!r} does not inflate: {exc}"
        ) from None
    budget.take(key, len(out))  # raises when the item inflates past the bound
    return out


def _read_png_text(ctype: bytes, body: bytes, probe: ImageProbe, budget: TextBudget) -> None:
    sep = body.find(b"\x00")
    if sep <= 0 or sep > 79:
        probe.warnings.append(f"PNG {ctype.decode()} chunk without a valid keyword skipped")
        return
    key = body[:sep].decode("latin-1")
    rest = body[sep + 1 :]
    if ctype == b"tEXt":
        text = decode_text(rest, f"PNG text {key!r}", probe.warnings)
    elif ctype == b"zTXt":
        text = decode_text(
            _inflate_bounded(rest[1:], key, budget), f"PNG text {key!r}", probe.warnings
        )
    else:
        if len(rest) < 2:
            probe.warnings.append(f"PNG iTXt chunk {key!r} is too short; skipped")
            return
        compressed = rest[0] == 1
        rest = rest[2:]
        lang_end = rest.find(b"\x00")
        trans_end = rest.find(b"\x00", lang_end + 1) if lang_end >= 0 else -1
        if trans_end < 0:
            probe.warnings.append(f"PNG iTXt chunk {key!r} is malformed; skipped")
            return
        payload = rest[trans_end + 1 :]
        if compressed:
            payload = _inflate_bounded(payload, key, budget)
        text = payload.decode("utf-8", errors="replace")
        if "\ufffd" in text:
            probe.warnings.append(f"PNG iTXt {key!r}: invalid UTF-8 replaced")
    if key == "XML:com.adobe.xmp":
        probe.items.update(parse_xmp(text, probe.warnings))
    elif key in probe.items:
        probe.warnings.append(f"PNG text key {key!r} appears twice; the first is kept")
    else:
        probe.items[key] = text


# ---------------------------------------------------------------- JPEG
