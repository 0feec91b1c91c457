"""EXIF (TIFF IFDs, text-bearing tags only) and XMP (no DTDs, no entities), bounded and
forgiving."""

from __future__ import annotations

import re
import struct
from xml.etree import ElementTree

from luna_core.containers.base import decode_text, decode_user_comment

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
    """The text-bearing EXIF tags, as 'exif:Name' items. Malformed EXIF yields a warning, not an
    error."""
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
                    items["exif:XPComment"] = value.decode("utf-16-le", errors="replace").rstrip(
                        "\x00"
                    )
                elif tag in _EXIF_TEXT_TAGS and typ in (2, 7):
                    text = decode_text(
                        value.rstrip(b"\x00"), f"EXIF {_EXIF_TEXT_TAGS[tag]}", warnings
                    )
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
    """The fields of an XMP packet that carry generation data; the packet itself is kept as
    'xmp'."""
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
        elif name is None and element.tag.startswith(
            "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}Desc"
        ):
            for attr, value in element.attrib.items():
                attr_name = _XMP_FIELDS.get(attr)
                if attr_name and attr_name not in items:
                    items[attr_name] = value
    return items
