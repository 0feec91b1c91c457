"""What every container reader shares: the bounds, the probe record, the text budget and text
decoding."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    has_alpha: bool = False  # an alpha channel, where stealth metadata may hide


class TextBudget:
    def __init__(self, limits: ProbeLimits):
        self.limits = limits
        self.used = 0

    def take(self, key: str, size: int) -> None:
        if size > self.limits.max_text_bytes:
            raise BadFileError(
                "metadata_too_large",
                f"metadata item {key!r} holds {size:,} bytes, over the "
                f"{self.limits.max_text_bytes:,}"
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


# ---------------------------------------------------------------- text decoding


def decode_text(raw: bytes, what: str, warnings: list[str]) -> str:
    """UTF-8 when it is valid (what most tools really write), else Latin-1 (the PNG spec's tEXt);
    text that a writer decoded as Latin-1 and re-encoded (UTF-8 twice) is undone."""
    try:
        return undo_double_encoding(raw.decode("utf-8"), what, warnings)
    except UnicodeDecodeError as exc:
        warnings.append(f"{what}: not valid UTF-8 (byte {exc.start}); read as Latin-1")
        return raw.decode("latin-1")


def undo_double_encoding(text: str, what: str, warnings: list[str]) -> str:
    """`#ãã¹ã` back to `#テスト`: when every character fits in Latin-1, some are not ASCII,
    and their Latin-1 bytes are valid UTF-8, the text is UTF-8 that was read as Latin-1 on its way
    in. Real Latin-1 text almost never forms valid UTF-8 sequences (an accented letter followed by
    C1 controls), so this reading is taken; anything else is left as it is."""
    if text.isascii() or max(map(ord, text)) > 0xFF:
        return text
    try:
        fixed = text.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return text
    warnings.append(
        f"{what}: UTF-8 that was read as Latin-1 on its way in (mojibake); read as UTF-8"
    )
    return fixed


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
