"""Bounded readers for the image containers AI tools write: PNG, JPEG and WebP.

They read the container structure and the metadata it carries (text chunks, EXIF, XMP, comments)
without decoding a single pixel, so a library is catalogued at disk speed. Every size is bounded:
a hostile file can make them refuse, never allocate without limit.
"""

from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass, field
from xml.etree import ElementTree

from luna_core.errors import BadFileError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ProbeLimits:
    """Bounds that keep hostile files from costing unbounded time or memory."""

    max_pixels: int = 100_000_000  # decompression-bomb guard; an 8K x 8K upscale is 67 MP
    max_text_bytes: int = 8 * 1024 * 1024  # one metadata item, after decompression
    max_total_text_bytes: int = 32 * 1024 * 1024
    max_chunks: int = 100_000
    max_file_bytes: int = 1024 * 1024 * 1024


@dataclass
class ImageProbe:
    """What the container says: format, size, and the metadata items it carries, keyed by name."""

    format: str
    width: int
    height: int
    items: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class _TextBudget:
    def __init__(self, limits: ProbeLimits):
        self.limits = limits
        self.used = 0

    def take(self, key: str, size: int) -> None:
        if size > self.limits.max_text_bytes:
            raise BadFileError(
                "metadata_too_large",
                f"metadata item {key!r} holds {size:,} bytes, over the {self.limits.max_text_bytes:,}"
                " byte bound (ProbeLimits.max_text_bytes)",
            )
        self.used += size
        if self.used > self.limits.max_total_text_bytes:
            raise BadFileError(
                "metadata_too_large",
                f"metadata items hold over {self.limits.max_total_text_bytes:,} bytes in all"
                " (ProbeLimits.max_total_text_bytes)",
            )


def sniff_format(head: bytes) -> str | None:
    """The container format from the first bytes, or None when it is none that Luna reads."""
    if head.startswith(PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None


def probe_image(data: bytes, limits: ProbeLimits = ProbeLimits()) -> ImageProbe:
    """Read an image file's structure and metadata from its bytes; raise BadFileError if unusable."""
    if not data:
        raise BadFileError("empty_file", "the file is empty (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        raise BadFileError(
            "not_an_image", f"content is not PNG, JPEG or WebP (it starts with {bytes(data[:8])!r})"
        )
    budget = _TextBudget(limits)
    probe = {"png": _probe_png, "jpeg": _probe_jpeg, "webp": _probe_webp}[fmt](data, budget)
    if probe.width <= 0 or probe.height <= 0:
        raise BadFileError("corrupt", f"{fmt.upper()} declares an empty size {probe.width}x{probe.height}")
    pixels = probe.width * probe.height
    if pixels > limits.max_pixels:
        raise BadFileError(
            "too_many_pixels",
            f"{probe.width}x{probe.height} = {pixels / 1e6:.0f} MP exceeds the {limits.max_pixels / 1e6:.0f} MP"
            " bound (decompression-bomb guard, ProbeLimits.max_pixels)",
        )
    return probe


# ---------------------------------------------------------------- text decoding


def decode_text(raw: bytes, what: str, warnings: list[str]) -> str:
    """UTF-8 when it is valid (what most tools really write), else Latin-1 (the PNG spec's tEXt)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        warnings.append(f"{what}: not valid UTF-8 (byte {exc.start}); read as Latin-1")
        return raw.decode("latin-1")


def decode_user_comment(raw: bytes, big_endian_tiff: bool, warnings: list[str]) -> str:
    """Decode an EXIF UserComment: an 8-byte charset header, then the payload.

    Writers disagree on the byte order of UNICODE payloads (piexif writes big-endian whatever the
    TIFF order; others follow the TIFF order), so the order is detected from the bytes themselves.
    """
    header, payload = raw[:8], raw[8:]
    if header == b"UNICODE\x00":
        return _decode_utf16(payload, big_endian_tiff, warnings).rstrip("\x00")
    if header in (b"ASCII\x00\x00\x00", b"\x00" * 8):
        return decode_text(payload, "EXIF UserComment", warnings).rstrip("\x00")
    if header == b"JIS\x00\x00\x00\x00\x00":
        return payload.decode("shift_jis", errors="replace").rstrip("\x00")
    # No charset header: some writers store the bare text.
    return decode_text(raw, "EXIF UserComment", warnings).rstrip("\x00")


def _decode_utf16(payload: bytes, big_endian_tiff: bool, warnings: list[str]) -> str:
    if payload[:2] in (b"\xfe\xff", b"\xff\xfe"):
        codec = "utf-16-be" if payload[:2] == b"\xfe\xff" else "utf-16-le"
        payload = payload[2:]
    else:
        sample = payload[:512]
        zeros_even = sample[0::2].count(0)
        zeros_odd = sample[1::2].count(0)
        if zeros_even != zeros_odd:
            codec = "utf-16-be" if zeros_even > zeros_odd else "utf-16-le"
        else:
            codec = "utf-16-be" if big_endian_tiff else "utf-16-le"
    if len(payload) % 2:
        warnings.append("EXIF UserComment: UTF-16 payload has an odd length; last byte dropped")
        payload = payload[:-1]
    text = payload.decode(codec, errors="replace")
    if "\ufffd" in text:
        warnings.append(f"EXIF UserComment: invalid {codec.upper()} sequences replaced")
    return text


# ---------------------------------------------------------------- PNG


def _probe_png(data: bytes, budget: _TextBudget) -> ImageProbe:
    probe = ImageProbe("png", 0, 0)
    size = len(data)
    pos = len(PNG_SIGNATURE)
    seen_ihdr = seen_idat = seen_iend = False
    for _ in range(budget.limits.max_chunks):
        if pos == size:
            break
        if pos + 8 > size:
            raise BadFileError("truncated", f"PNG ends inside a chunk header at byte {pos:,} of {size:,}")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        start, end = pos + 8, pos + 8 + length
        if end + 4 > size:
            name = ctype.decode("latin-1", "replace")
            raise BadFileError(
                "truncated", f"PNG ends inside chunk {name} (needs {end + 4:,} bytes, file has {size:,})"
            )
        # Slice only what is read: IDAT bodies are most of the file and never needed here.
        body = data[start:end] if ctype in (b"IHDR", b"tEXt", b"zTXt", b"iTXt", b"eXIf") else b""
        if ctype == b"IHDR":
            if length != 13:
                raise BadFileError("corrupt", f"PNG IHDR chunk has length {length}, not 13")
            _check_crc(data, pos, end, "IHDR")
            probe.width, probe.height = struct.unpack(">II", body[:8])
            seen_ihdr = True
        elif not seen_ihdr:
            raise BadFileError("corrupt", "PNG does not start with an IHDR chunk")
        elif ctype == b"IDAT":
            seen_idat = True
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
        raise BadFileError("truncated" if not seen_iend else "corrupt", "PNG holds no image data (IDAT)")
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


def _inflate_bounded(compressed: bytes, key: str, budget: _TextBudget) -> bytes:
    limit = budget.limits.max_text_bytes
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(compressed, limit + 1)
    except zlib.error as exc:
        raise BadFileError("corrupt", f"compressed metadata item {key!r} does not inflate: {exc}") from None
    budget.take(key, len(out))  # raises when the item inflates past the bound
    return out


def _read_png_text(ctype: bytes, body: bytes, probe: ImageProbe, budget: _TextBudget) -> None:
    sep = body.find(b"\x00")
    if sep <= 0 or sep > 79:
        probe.warnings.append(f"PNG {ctype.decode()} chunk without a valid keyword skipped")
        return
    key = body[:sep].decode("latin-1")
    rest = body[sep + 1 :]
    if ctype == b"tEXt":
        text = decode_text(rest, f"PNG text {key!r}", probe.warnings)
    elif ctype == b"zTXt":
        text = decode_text(_inflate_bounded(rest[1:], key, budget), f"PNG text {key!r}", probe.warnings)
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

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_XMP_JPEG_PREFIX = b"http://ns.adobe.com/xap/1.0/\x00"


def _probe_jpeg(data: bytes, budget: _TextBudget) -> ImageProbe:
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
            raise BadFileError("truncated", f"JPEG segment 0x{marker:02X} runs past the end of the file")
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
            probe.items.setdefault("jpeg:comment", decode_text(body, "JPEG comment", probe.warnings))
        elif marker == 0xDA:
            if probe.width == 0:
                raise BadFileError("corrupt", "JPEG image data starts before a frame header")
            # 0xFFD9 cannot occur inside entropy-coded data (0xFF is stuffed), so its presence
            # after the scan start tells a complete file from a cut one without decoding.
            if data.find(b"\xff\xd9", end) < 0:
                raise BadFileError("truncated", f"JPEG image data is cut off (no end marker in {size:,} bytes)")
            return probe
        pos = end
    raise BadFileError("corrupt", f"JPEG has more than {budget.limits.max_chunks:,} segments")


# ---------------------------------------------------------------- WebP


def _probe_webp(data: bytes, budget: _TextBudget) -> ImageProbe:
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
        body = data[start:end] if fourcc in (b"EXIF", b"XMP ") else data[start : min(end, start + 16)]
        if fourcc == b"VP8X" and length >= 10:
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

_EXIF_TEXT_TAGS = {
    0x010E: "ImageDescription",
    0x010F: "Make",
    0x0110: "Model",
    0x0131: "Software",
    0x013B: "Artist",
    0x9C9C: "XPComment",
}
_EXIF_IFD_POINTER = 0x8769
_USER_COMMENT = 0x9286
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 7: 1, 9: 4, 10: 8}


def parse_exif(tiff: bytes, warnings: list[str]) -> dict[str, str]:
    """The text-bearing EXIF tags, as 'exif:Name' items. Malformed EXIF yields a warning, not an error."""
    items: dict[str, str] = {}
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        warnings.append("EXIF block without a TIFF header ignored")
        return items
    big = tiff[:2] == b"MM"
    end = ">" if big else "<"
    try:
        (ifd0,) = struct.unpack(end + "I", tiff[4:8])
        queue, visited = [(ifd0, False)], set()
        while queue:
            offset, is_exif_ifd = queue.pop()
            if offset in visited or offset + 2 > len(tiff):
                continue
            visited.add(offset)
            (count,) = struct.unpack(end + "H", tiff[offset : offset + 2])
            for i in range(min(count, 512)):
                entry = offset + 2 + 12 * i
                if entry + 12 > len(tiff):
                    warnings.append("EXIF directory runs past its block; rest ignored")
                    break
                tag, typ, n = struct.unpack(end + "HHI", tiff[entry : entry + 8])
                nbytes = _TYPE_SIZES.get(typ, 1) * n
                if nbytes <= 4:
                    value = tiff[entry + 8 : entry + 8 + nbytes]
                else:
                    (voff,) = struct.unpack(end + "I", tiff[entry + 8 : entry + 12])
                    value = tiff[voff : voff + nbytes]
                    if voff + nbytes > len(tiff):
                        warnings.append(f"EXIF tag 0x{tag:04X} points past its block; ignored")
                        continue
                if tag == _EXIF_IFD_POINTER and not is_exif_ifd and len(value) == 4:
                    queue.append((struct.unpack(end + "I", value)[0], True))
                elif tag == _USER_COMMENT:
                    items["exif:UserComment"] = decode_user_comment(value, big, warnings)
                elif tag == 0x9C9C:
                    items["exif:XPComment"] = value.decode("utf-16-le", errors="replace").rstrip("\x00")
                elif tag in _EXIF_TEXT_TAGS and typ in (2, 7):
                    text = decode_text(value.rstrip(b"\x00"), f"EXIF {_EXIF_TEXT_TAGS[tag]}", warnings)
                    items[f"exif:{_EXIF_TEXT_TAGS[tag]}"] = text
    except struct.error:
        warnings.append("EXIF block is malformed; partly read")
    return items


# ---------------------------------------------------------------- XMP

_XMP_FORBIDDEN = re.compile(r"<!(DOCTYPE|ENTITY)", re.IGNORECASE)
_XMP_FIELDS = {
    "{http://ns.adobe.com/exif/1.0/}UserComment": "xmp:UserComment",
    "{http://ns.adobe.com/xap/1.0/}CreatorTool": "xmp:CreatorTool",
    "{http://purl.org/dc/elements/1.1/}description": "xmp:description",
}


def parse_xmp(xml_text: str, warnings: list[str]) -> dict[str, str]:
    """The fields of an XMP packet that carry generation data; the packet itself is kept as 'xmp'."""
    items = {"xmp": xml_text}
    if _XMP_FORBIDDEN.search(xml_text):
        warnings.append("XMP packet declares a DOCTYPE or entities; not parsed")
        return items
    start = xml_text.find("<x:xmpmeta")
    stop = xml_text.rfind("</x:xmpmeta>")
    if start < 0 or stop < 0:
        start = xml_text.find("<rdf:RDF")
        stop = xml_text.rfind("</rdf:RDF>")
        closing = len("</rdf:RDF>")
    else:
        closing = len("</x:xmpmeta>")
    if start < 0 or stop < 0:
        warnings.append("XMP packet without an xmpmeta or RDF element")
        return items
    try:
        root = ElementTree.fromstring(xml_text[start : stop + closing])
    except ElementTree.ParseError as exc:
        warnings.append(f"XMP packet is not well-formed XML: {exc}")
        return items
    for element in root.iter():
        name = _XMP_FIELDS.get(element.tag)
        if name and name not in items:
            text = "".join(element.itertext()).strip()
            if text:
                items[name] = text
        elif name is None and element.tag.startswith("{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Desc"):
            for attr, value in element.attrib.items():
                attr_name = _XMP_FIELDS.get(attr)
                if attr_name and attr_name not in items:
                    items[attr_name] = value
    return items
