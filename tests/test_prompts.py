"""Prompts read by their writers' rules, and encoded as their writers encode them."""

from __future__ import annotations

import numpy as np
import pytest

from luna_core.prompts.parsers import parse
from luna_core.prompts.syntax import (
    MAX_PROMPT_CHARS,
    PARSER_VERSION,
    conditioning_key,
    syntax_for,
)

R, S = 1.1, 1 / 1.1


def pieces(text: str, syntax: str) -> list[tuple[str, float]]:
    return [(p.text, round(p.weight, 6)) for p in parse(text, syntax).pieces]


# (prompt, expected pieces) as AUTOMATIC1111's parse_prompt_attention reads them (its own
# docstring's cases among them), after extra networks and schedules are taken out.
A1111 = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", R)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    # parse_prompt_attention's own docstring example: the third '(' of 'house' is never closed.
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.573),
            (" ", R),
            ("on", 1.0),
            (" a ", R),
            ("hill", 0.55),
            (", sun, ", R),
            ("sky", 1.4641),
            (".", R),
        ],
    ),
    ("(masterpiece:1.2), [blurry]", [("masterpiece", 1.2), (", ", 1.0), ("blurry", round(S, 6))]),
    ("(red dress:1.4)", [("red dress", 1.4)]),
    ("stray) and ] close", [("stray) and ] close", 1.0)]),
    ("a [dog:cat:0.5] sits", [("a cat sits", 1.0)]),
    ("[dog|cat] [bird::0.3]", [("dog ", 1.0)]),
]


@pytest.mark.parametrize("text, expected", A1111)
def test_a1111_reads_as_parse_prompt_attention_does(text, expected):
    assert pieces(text, "a1111") == expected


def test_a1111_takes_out_extra_networks_and_breaks_chunks():
    parsed = parse(
        "(masterpiece:1.2), 1girl, <lora:detail_tweaker:0.6> <hypernet:h:1> BREAK red dress, "
        "__colors__ hat",
        "a1111",
    )
    assert [(r.kind, r.name, r.value) for r in parsed.removed] == [
        ("lora", "detail_tweaker", "0.6"),
        ("hypernet", "h", "1"),
        ("wildcard", "colors", ""),
    ]
    assert "lora" not in parsed.plain and "BREAK" not in parsed.plain and parsed.breaks
    assert parsed.plain.startswith("masterpiece, 1girl,")


COMFY = [
    ("(masterpiece:1.2), [blurry]", [("masterpiece", 1.2), (", [blurry]", 1.0)]),
    (
        "((a (b:1.5)))",
        [("a ", round(R * R, 6)), ("b", 1.5)],
    ),  # (x:w) sets the weight, nesting aside
    ("(unbalanced", [("(unbalanced", 1.0)]),
    ("\\(literal\\) (x)", [("(literal) ", 1.0), ("x", R)]),
    ("(a:notanumber)", [("a:notanumber", R)]),
]


@pytest.mark.parametrize("text, expected", COMFY)
def test_comfy_reads_as_token_weights_does(text, expected):
    assert pieces(text, "comfy") == expected


def test_comfy_takes_out_embeddings_and_encodes_lora_tags_as_its_nodes_do():
    """Stock ComfyUI skips an embedding it does not have, and encodes `<lora:…>` as text (only a
    LoRA-tag node takes it out: then the graph hands the encoder the text without it)."""
    parsed = parse("embedding:EasyNegative, <lora:x:0.8> (bad hands:1.3)", "comfy")
    assert {(r.kind, r.name) for r in parsed.removed} == {("embedding", "EasyNegative")}
    assert "embedding" not in parsed.plain and any("not loaded" in n for n in parsed.notes)
    assert "<lora:x:0.8>" in parsed.plain
    assert any("encoded as text" in n and "x" in n for n in parsed.notes)


def test_novelai_braces():
    assert pieces("{{best}} [bad] text", "novelai") == [
        ("best", round(1.05**2, 6)),
        (" ", 1.0),
        ("bad", round(1 / 1.05, 6)),
        (" text", 1.0),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "(" * 10_000 + "deep" + ")" * 10_000,
        "(x:1e308)" * 3,
        "(x:nan)",
        "(x:inf) y",
        "<lora:unterminated a cat",
        "a" * 50_000,
        "{(x:1.2)} [y|z] <lora:a:1> \\( BREAK ((",
        "",
    ],
)
@pytest.mark.parametrize("syntax", ["a1111", "comfy", "novelai", "compel", "literal"])
def test_hostile_prompts_parse_to_finite_weights_or_say_why(text, syntax):
    parsed = parse(text, syntax)
    assert all(np.isfinite(p.weight) for p in parsed.pieces)
    assert len(parsed.plain) <= MAX_PROMPT_CHARS
    if len(text) > MAX_PROMPT_CHARS:
        assert any("characters" in n for n in parsed.notes)
    # A1111's weight pattern takes digits only: ":nan)" stays text
    if "nan" in text and syntax == "comfy":
        assert any("not a number" in n for n in parsed.notes)


def test_keys_tell_writers_apart_and_literal_keeps_the_old_key():
    import hashlib

    text = "(a cat:1.2)"
    assert conditioning_key(text, "literal/1") == hashlib.sha256(text.encode()).hexdigest()
    assert len({parse(text, s).key() for s in ("a1111", "comfy", "literal")}) == 3
    assert (
        syntax_for("Forge") == "a1111"
        and syntax_for("ComfyUI") == "comfy"
        and syntax_for("Unknown") == "literal"
    )
    assert syntax_for("ComfyUI", "a1111") == "a1111"


# ---------------------------------------------------------------- encoding (tiny encoders)


@pytest.fixture(scope="module")
def encoder(tiny_models):
    import torch

    from luna_core.models.encoders import SDXLTextEncoder
    from luna_core.models.profiles import tiny_profile

    return SDXLTextEncoder(tiny_profile(tiny_models).sdxl_model, None, "cpu", torch.float32)


@pytest.mark.parametrize("syntax", ["a1111", "comfy", "novelai", "compel", "literal"])
def test_a_plain_short_prompt_encodes_bit_for_bit_as_before(encoder, syntax):
    from luna_core.prompts.encode import encode_parsed

    for text in ("a red fox in the snow, watercolor", ""):
        tokens, pooled = encode_parsed(encoder, parse(text, syntax))
        base, base_pooled = encoder.encode([text])
        assert np.array_equal(tokens, base[0]) and np.array_equal(pooled, base_pooled[0])


def test_long_prompts_are_chunked_not_cut(encoder):
    from luna_core.prompts.chunking import CHUNK, chunk_tokens
    from luna_core.prompts.encode import encode_parsed

    text = ", ".join(f"a detailed red fox number {i}" for i in range(40))  # far past 75 tokens
    for syntax in ("a1111", "comfy", "compel"):
        tokens, _ = encode_parsed(encoder, parse(text, syntax))
        assert tokens.shape[0] % 77 == 0 and tokens.shape[0] >= 3 * 77, syntax
    assert encode_parsed(encoder, parse(text, "literal"))[0].shape[0] == 77, (
        "literal keeps today's cut"
    )
    chunks = chunk_tokens((encoder.tokenizer, encoder.tokenizer_2), parse(text, "a1111"))
    comma = encoder.tokenizer(",", add_special_tokens=False).input_ids[0]
    for row in chunks.ids[0][:-1]:  # A1111 ends a full chunk at its last comma
        body = [t for t in row[1:] if t not in (encoder.tokenizer.eos_token_id,)]
        assert body[-1] == comma and len(body) <= CHUNK
    # The first chunk of a long prompt is the encoding of its own text: chunks are encoded on their
    # own.
    first, _ = encode_parsed(encoder, parse(text, "a1111"))
    assert not np.allclose(first[:77], first[77:154])


def test_break_starts_a_chunk(encoder):
    from luna_core.prompts.encode import encode_parsed

    tokens, _ = encode_parsed(encoder, parse("a red fox BREAK in the snow", "a1111"))
    alone, _ = encode_parsed(encoder, parse("in the snow", "a1111"))
    assert tokens.shape[0] == 154 and np.allclose(tokens[77:], alone, atol=1e-6)


def test_weights_follow_each_writers_rule(encoder):
    from luna_core.prompts.encode import encode_parsed

    plain, _ = encode_parsed(encoder, parse("a red fox", "a1111"))
    a1111, _ = encode_parsed(encoder, parse("a (red:1.5) fox", "a1111"))
    comfy, _ = encode_parsed(encoder, parse("a (red:1.5) fox", "comfy"))
    empty, _ = encoder.encode([""])
    assert np.isclose(a1111.mean(), plain.mean(), rtol=1e-5), "A1111 restores the chunk's mean"
    red = 2  # start token, "a", then "red"
    expected = (plain[red] - empty[0][red]) * 1.5 + empty[0][red]
    assert np.allclose(comfy[red], expected, atol=1e-5), (
        "ComfyUI moves the token from the empty prompt"
    )
    assert np.allclose(comfy[1], plain[1], atol=1e-6) and not np.allclose(a1111, comfy)


def test_compel_syntax_goes_through_compel(encoder):
    from compel import CompelForSDXL

    from luna_core.prompts.encode import encode_parsed

    tokens, pooled = encode_parsed(encoder, parse("a red fox++ in the (snow)1.3", "compel"))
    reference = CompelForSDXL(encoder, device="cpu")("a red fox++ in the (snow)1.3")
    assert np.allclose(tokens, reference.embeds[0].numpy(), atol=1e-6)
    plain, _ = encode_parsed(encoder, parse("a red fox in the snow", "compel"))
    assert not np.allclose(tokens, plain)


def test_inspect_shows_how_a_prompt_is_read(tmp_path):
    from PIL import Image, PngImagePlugin

    from luna_cli.inspect import inspect_file

    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "(masterpiece:1.2), a [red] fox, <lora:detail:0.5> BREAK snow\n"
        "Negative prompt: (blurry:1.4)\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, "
        "Size: 64x64, Model: sdxl",
    )
    path = tmp_path / "a.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    result = inspect_file(str(path))
    prompt = result["prompt_parse"]["prompt"]
    assert (
        prompt["rules"] == f"a1111/{PARSER_VERSION}"
        and ["masterpiece", 1.2] in prompt["pieces"]
        and prompt["breaks"]
    )
    assert result["prompt_parse"]["negative_prompt"]["pieces"] == [["blurry", 1.4]]


def test_a_writers_syntax_can_be_overridden_and_reaches_earlier_generations(tiny_home, monkeypatch):
    import duckdb

    from luna_core.errors import LunaConfigError
    from luna_core.ingest.run import IngestOptions, ingest

    def syntaxes() -> dict:
        with duckdb.connect(str(tiny_home.catalog_path), read_only=True) as con:
            return dict(
                con.execute(
                    "SELECT generator, any_value(prompt_syntax) FROM generations GROUP BY 1"
                ).fetchall()
            )

    assert syntaxes()["ComfyUI"] == "comfy"
    monkeypatch.setenv("LUNA_PROMPT_WRITERS", "ComfyUI=a1111")
    options = IngestOptions(workers=1, progress=False, writer_syntax=tiny_home.writer_syntax())
    report = ingest(tiny_home.catalog_path, tiny_home.roots(), options)
    assert (
        syntaxes()["ComfyUI"] == "a1111"
        and syntaxes()["AUTOMATIC1111"] == "a1111"
        and report.syntax_changed > 0
    )
    monkeypatch.delenv("LUNA_PROMPT_WRITERS")
    ingest(tiny_home.catalog_path, tiny_home.roots(), IngestOptions(workers=1, progress=False))
    assert syntaxes()["ComfyUI"] == "comfy"
    monkeypatch.setenv("LUNA_PROMPT_WRITERS", "ComfyUI=fancy")
    with pytest.raises(
        LunaConfigError, match=r"\$LUNA_PROMPT_WRITERS: 'ComfyUI=fancy' is not GENERATOR=SYNTAX"
    ):
        tiny_home.writer_syntax()
