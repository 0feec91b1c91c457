"""Container readers: sizes, metadata items, and refusal of hostile or broken files."""

from __future__ import annotations

import zlib

import pytest
from PIL import Image

from luna_core.containers.probe import (
    ProbeLimits,
    decode_user_comment,
    parse_exif,
    parse_xmp,
    probe_image,
)
from luna_core.errors import BadFileError
from luna_core.samples.writers.registry import (
    ascii_tag,
    insert_png_chunks,
    jpeg_bytes,
    png_bytes,
    png_chunk,
    tiff_block,
    user_comment,
    webp_bytes,
)

PICTURE = Image.new("RGB", (40, 30), (10, 120, 200))


def test_png_text_chunks_and_size():
    data = png_bytes(
        PICTURE, text=[("parameters", "a cat\nSteps: 1, Sampler: Euler, Seed: 3"), ("Title", "t")]
    )
    probe = probe_image(data)
    assert (probe.format, probe.width, probe.height) == ("png", 40, 30)
    assert probe.items["parameters"].startswith("a cat")
    assert probe.items["Title"] == "t"


def test_png_non_latin1_text_is_written_as_itxt_and_read_back():
    data = png_bytes(PICTURE, text=[("parameters", "一只猫, café")])
    assert b"iTXt" in data
    assert probe_image(data).items["parameters"] == "一只猫, café"


def test_png_ztxt_is_inflated():
    chunk = png_chunk(b"zTXt", b"parameters\x00\x00" + zlib.compress(b"a compressed prompt"))
    data = insert_png_chunks(png_bytes(PICTURE), [chunk])
    assert probe_image(data).items["parameters"] == "a compressed prompt"


def test_png_ztxt_bomb_is_refused_without_inflating_it_all():
    bomb = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)  # 64 MB from ~64 KB
    data = insert_png_chunks(png_bytes(PICTURE), [png_chunk(b"zTXt", b"parameters\x00\x00" + bomb)])
    with pytest.raises(BadFileError) as err:
        probe_image(data, ProbeLimits(max_text_bytes=1024 * 1024))
    assert err.value.reason == "metadata_too_large"
    assert "parameters" in err.value.detail


def test_gigantic_plain_text_chunk_is_refused():
    data = insert_png_chunks(
        png_bytes(PICTURE), [png_chunk(b"tEXt", b"parameters\x00" + b"x" * 300_000)]
    )
    with pytest.raises(BadFileError) as err:
        probe_image(data, ProbeLimits(max_text_bytes=100_000))
    assert err.value.reason == "metadata_too_large"


def test_text_chunk_with_bad_crc_is_skipped_with_a_warning():
    chunk = bytearray(png_chunk(b"tEXt", b"parameters\x00hello"))
    chunk[-1] ^= 0xFF
    probe = probe_image(insert_png_chunks(png_bytes(PICTURE), [bytes(chunk)]))
    assert "parameters" not in probe.items
    assert any("CRC" in w for w in probe.warnings)


@pytest.mark.parametrize("cut", [9, 20, 40, 0.5, 0.9, -12])
def test_truncated_png_is_refused(cut):
    data = png_bytes(PICTURE, text=[("parameters", "p")])
    end = int(len(data) * cut) if isinstance(cut, float) else cut
    with pytest.raises(BadFileError) as err:
        probe_image(data[:end])
    assert err.value.reason in ("truncated", "corrupt")


def test_decompression_bomb_is_refused_from_the_header_alone():
    from luna_core.samples.sample_library import _png_1bit

    with pytest.raises(BadFileError) as err:
        probe_image(_png_1bit(20000, 20000))
    assert err.value.reason == "too_many_pixels"
    assert "20000x20000" in err.value.detail
    assert probe_image(_png_1bit(20000, 20000), ProbeLimits(max_pixels=500_000_000)).width == 20000


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty_file"),
        (b"hello world, not an image", "not_an_image"),
        (b"GIF89a" + b"\x00" * 20, "not_an_image"),
        (b"\x89PNG\r\n\x1a\n", "truncated"),
        (b"RIFF\xff\xff\x00\x00WEBPVP8 ", "truncated"),
    ],
)
def test_bad_bytes_get_a_reason(data, reason):
    with pytest.raises(BadFileError) as err:
        probe_image(data)
    assert err.value.reason == reason
    assert err.value.detail


def test_jpeg_truncated_in_image_data_is_refused():
    data = jpeg_bytes(PICTURE)
    assert probe_image(data).format == "jpeg"
    with pytest.raises(BadFileError) as err:
        probe_image(data[: len(data) - 40])
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("big_endian", [True, False])
@pytest.mark.parametrize("charset", ["utf-16-be", "utf-16-le", "ascii", "plain"])
def test_jpeg_exif_user_comment_in_every_layout(big_endian, charset):
    text = "a cat, 日本語\nSteps: 20, Sampler: Euler a, Seed: 1"
    if charset == "ascii":
        text = text.replace("日本語", "ascii")
    tiff = tiff_block({}, {0x9286: (7, user_comment(text, charset))}, big_endian=big_endian)
    probe = probe_image(jpeg_bytes(PICTURE, [b"Exif\x00\x00" + tiff]))
    assert probe.items["exif:UserComment"] == text
    assert (probe.width, probe.height) == (40, 30)


def test_utf16_byte_order_is_detected_not_assumed():
    text = "Steps: 20, a prompt"
    # A little-endian TIFF holding a big-endian payload (piexif-style writers do this).
    assert decode_user_comment(b"UNICODE\x00" + text.encode("utf-16-be"), False, []) == text
    assert decode_user_comment(b"UNICODE\x00" + text.encode("utf-16-le"), True, []) == text
    assert decode_user_comment(b"UNICODE\x00" + text.encode("utf-16"), True, []) == text  # with BOM


def test_utf16_garbage_decodes_with_warnings_not_errors():
    warnings: list[str] = []
    out = decode_user_comment(b"UNICODE\x00" + bytes(range(255)) + b"\x00\xd8", True, warnings)
    assert isinstance(out, str)
    assert any("odd length" in w for w in warnings)


def test_webp_exif_and_xmp_are_read():
    tiff = tiff_block({0x0110: ascii_tag("prompt:{}")}, {}, big_endian=False)
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Draw '
        'Things"/></rdf:RDF></x:xmpmeta>'
    )
    probe = probe_image(webp_bytes(PICTURE, exif=b"Exif\x00\x00" + tiff, xmp=xmp))
    assert (probe.format, probe.width, probe.height) == ("webp", 40, 30)
    assert probe.items["exif:Model"] == "prompt:{}"
    assert probe.items["xmp:CreatorTool"] == "Draw Things"


def test_webp_truncated_is_refused():
    data = webp_bytes(PICTURE)
    with pytest.raises(BadFileError) as err:
        probe_image(data[:-10])
    assert err.value.reason == "truncated"


def test_xmp_with_entities_is_not_parsed():
    billion_laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol;</x:xmpmeta>'
    )
    warnings: list[str] = []
    items = parse_xmp(billion_laughs, warnings)
    assert set(items) == {"xmp"}
    assert any("DOCTYPE" in w for w in warnings)


def test_malformed_exif_gives_warnings_not_exceptions():
    warnings: list[str] = []
    assert parse_exif(b"II*\x00\xff\xff\xff\x7f", warnings) == {}
    assert parse_exif(b"junk", warnings) == {}
    # An Exif sub-IFD pointer that points back at IFD0: the walk must end.
    import struct

    cyclic = (
        b"II*\x00\x08\x00\x00\x00"
        + b"\x01\x00"
        + struct.pack("<HHII", 0x8769, 4, 1, 8)
        + b"\x00" * 4
    )
    assert parse_exif(cyclic, warnings) == {}
