"""The prompt stored is the text the generator encoded (issue: legacy InvokeAI, Civitai's generator,
Gradio, ComfyUI graphs that compute their text, mis-decoded chunks, Fooocus); never a wrong one."""

from __future__ import annotations

import json
import random

import pytest

from luna_core.containers.base import undo_double_encoding
from luna_core.containers.probe import probe_image
from luna_core.metadata.audit import audit_prompts
from luna_core.metadata.civitai import parse_air
from luna_core.metadata.dispatch import parse_generation
from luna_core.metadata.invokeai import parse_dream, parse_sd_metadata
from luna_core.samples.pictures import PromptSpec
from luna_core.samples.writers.encoded import civitai_generator_record
from luna_core.samples.writers.registry import (
    FORMATS,
    Generation,
    comfy_expansion_graph,
    encoded_prompt,
    insert_png_chunks,
    png_bytes,
    png_chunk,
    write_comfy_llm_expanded_png,
)

# one picture and generation for every writer test
from tests.test_metadata_formats import (
    GEN,
    PICTURE,
)


def record_of(items: dict[str, str]):
    return parse_generation(items)


def png_items(text: list[tuple[str, str]]):
    return probe_image(png_bytes(PICTURE, text=text)).items


# ---------------------------------------------------------------- InvokeAI 1.x-2.x

DREAM_CASES = [
    # (Dream line, prompt, negative, settings)
    (
        '"a cat [blurry]" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms',
        "a cat",
        "blurry",
        {
            "steps": 50,
            "seed": 42,
            "width": 512,
            "height": 768,
            "cfg_scale": 7.5,
            "sampler": "k_lms",
        },
    ),
    (
        '"a cat" -s 30 -S 1 -G 0.9 -ft codeformer -cf 0.75 -U 4 0.95 -V '
        "3647897225,0.1;1614299449,0.1",
        "a cat",
        None,
        {"steps": 30, "seed": 1},
    ),
    (
        '"a "quoted" cat -style, -s 5 kind" -s 20 -S 5 --seamless',
        'a "quoted" cat -style, -s 5 kind',
        None,
        {"steps": 20, "seed": 5},
    ),
    (
        "a cat -style on a mat -s50 -S42 -C7.5",
        "a cat -style on a mat",
        None,
        {"steps": 50, "seed": 42, "cfg_scale": 7.5},
    ),
    (
        '"[ugly] portrait, [bad hands] smiling" -s 10 -S 2',
        "portrait, smiling",
        "ugly, bad hands",
        {"steps": 10},
    ),
]


@pytest.mark.parametrize("line, prompt, negative, settings", DREAM_CASES)
def test_dream_lines_give_the_prompt_and_read_switches_as_settings(
    line, prompt, negative, settings
):
    record = parse_dream(line)
    assert (record.prompt, record.negative_prompt) == (prompt, negative)
    for name, value in settings.items():
        assert getattr(record, name) == value, name


def test_dream_variations_face_restoration_and_upscale_are_settings():
    record = parse_dream(DREAM_CASES[1][0])
    switches = record.extra["dream_switches"]
    assert switches["variations"] == [[3647897225, 0.1], [1614299449, 0.1]]
    assert switches["-U"] == ["4", "0.95"] and switches["-G"] == "0.9" and switches["-cf"] == "0.75"
    assert parse_dream('"x" -V 11:0.2,12:0.3').extra["dream_switches"]["variations"] == [
        [11, 0.2],
        [12, 0.3],
    ]


def test_sd_metadata_of_either_era_and_a_blend_that_is_not_one_text():
    early = {
        "model_id": "stable-diffusion-1.4",
        "model_hash": "fe4efff1",
        "images": [
            {
                "prompt": [{"prompt": "a cat [blurry]", "weight": 1.0}],
                "seed": 7,
                "steps": 20,
                "cfg_scale": 7.5,
                "sampler": "k_lms",
                "width": 512,
                "height": 512,
            }
        ],
    }
    record = parse_sd_metadata(json.dumps(early))
    assert (record.prompt, record.negative_prompt, record.seed, record.model) == (
        "a cat",
        "blurry",
        7,
        "stable-diffusion-1.4",
    )
    blend = {
        "image": {
            "prompt": [{"prompt": "a cat", "weight": 0.5}, {"prompt": "a dog", "weight": 0.5}],
            "seed": 1,
        }
    }
    record = parse_sd_metadata(json.dumps(blend))
    assert record.prompt is None and len(record.extra["prompt_pieces"]) == 2 and record.warnings


def test_both_chunks_give_one_record_that_fills_from_the_dream_line():
    metadata = {
        "model_id": "m",
        "image": {"prompt": [{"prompt": "a cat [blurry]", "weight": 1}], "seed": 9},
    }
    record = record_of(
        png_items(
            [
                ("Dream", '"a cat [blurry]" -s 25 -S 9 -C 6 -A ddim'),
                ("sd-metadata", json.dumps(metadata)),
            ]
        )
    )
    assert (record.prompt, record.negative_prompt, record.seed, record.steps) == (
        "a cat",
        "blurry",
        9,
        25,
    )
    assert record.source == "png:sd-metadata" and record.extra["read_by"]["steps"] == "png:Dream"


# ---------------------------------------------------------------- Civitai, Gradio


def test_air_urns_name_kind_model_and_version():
    assert parse_air("urn:air:sdxl:lora:civitai:58390@62833") == {
        "ecosystem": "sdxl",
        "type": "lora",
        "source": "civitai",
        "model_id": "58390",
        "version_id": "62833",
    }
    assert parse_air("juggernautXL_v9.safetensors") is None


def test_civitai_generator_reads_the_graph_and_its_json_string():
    record = record_of({"exif:UserComment": json.dumps(civitai_generator_record(GEN))})
    assert record.generator == "Civitai" and record.prompt == GEN.prompt and record.seed == GEN.seed
    assert record.extra["prompt_parser"] == "A1111" and record.extra["workflowId"] == "txt2img"
    assert [(r["type"], r["model_id"], r["version_id"]) for r in record.extra["air"]] == [
        ("checkpoint", "133005", "456194"),
        ("lora", "58390", "62833"),
    ]
    assert record.loras[0].weight == pytest.approx(0.6)
    # Where the graph gives no text, the typed prompt of extraMetadata fills in, and says so.
    data = civitai_generator_record(GEN)
    data["6"]["inputs"]["text"] = ["404", 0]
    record = record_of({"exif:UserComment": json.dumps(data)})
    assert (
        record.prompt == GEN.prompt and record.extra["read_by"]["prompt"] == "extraMetadata.prompt"
    )


def test_a_json_parameters_chunk_is_never_read_as_a1111_text():
    gradio = record_of(
        png_items(
            [
                (
                    "parameters",
                    json.dumps(
                        {
                            "prompt": "a cat",
                            "negative_prompt": "ugly",
                            "guidance_scale": 5,
                            "num_inference_steps": 30,
                            "seed": 4,
                            "resolution": "1024 x 768",
                            "Model": "m",
                        }
                    ),
                )
            ]
        )
    )
    assert (gradio.generator, gradio.prompt, gradio.steps, gradio.width, gradio.height) == (
        "Gradio",
        "a cat",
        30,
        1024,
        768,
    )
    other = record_of(
        png_items([("parameters", json.dumps({"prompt": "a dog", "seed": 5, "Steps: 20": "x"}))])
    )
    assert (
        other.generator == "unknown"
        and other.prompt == "a dog"
        and "Steps" not in (other.prompt or "")
    )
    assert json.loads(other.raw["parameters"])["seed"] == 5


# ---------------------------------------------------------------- ComfyUI graphs that compute their
# text


def test_a_constant_switch_and_string_nodes_are_evaluated():
    from luna_core.metadata.comfyui import parse_comfyui

    record = parse_comfyui(json.dumps(comfy_expansion_graph(GEN)), None)
    assert record.prompt == GEN.prompt and record.extra["text_encoder_family"] == "qwen_image"
    assert "prompt_unknown" not in record.extra


def test_text_an_llm_made_at_run_time_is_unknown_never_its_instruction():
    record = record_of(probe_image(write_comfy_llm_expanded_png(PICTURE, GEN)[0]).items)
    assert record.prompt is None, "the LLM's input is not what was encoded"
    assert "TextGenerate" in record.extra["prompt_unknown"] and record.extra["prompt_given"] == [
        GEN.prompt
    ]
    # An undecidable switch: unknown, with a warning, never the first branch.
    graph = comfy_expansion_graph(GEN)
    graph["15"]["inputs"]["switch"] = ["99", 0]
    from luna_core.metadata.comfyui import parse_comfyui

    record = parse_comfyui(json.dumps(graph), None)
    assert record.prompt is None and any("switch" in w for w in record.warnings)


def test_a_save_nodes_evaluated_text_fills_a_prompt_the_graph_cannot_give():
    api = comfy_expansion_graph(GEN, expand=True)
    text = (
        f"an expanded text\nNegative prompt: {GEN.negative}\nSteps: 28, Seed: {GEN.seed}, "
        "Version: ComfyUI"
    )
    record = record_of(png_items([("parameters", text), ("prompt", json.dumps(api))]))
    assert record.prompt == "an expanded text" and "save node" in record.extra["read_by"]["prompt"]


# ---------------------------------------------------------------- text encodings, Fooocus,
# Stability Matrix


def test_utf8_read_as_latin1_is_undone_and_real_latin1_is_left_alone():
    written = "#テスト, a cat"
    # what a Latin-1 reader made of it, written back as UTF-8
    double = written.encode("utf-8").decode("latin-1")
    chunk = png_chunk(b"tEXt", b"parameters\x00" + double.encode("utf-8"))
    items = probe_image(insert_png_chunks(png_bytes(PICTURE), [chunk])).items
    assert items["parameters"] == written
    warnings: list[str] = []
    for text in ("café au lait", "naïve»", "plain"):
        assert undo_double_encoding(text, "t", warnings) == text
    assert not warnings


def test_stability_matrix_keeps_the_written_prompt_apart_from_the_encoded_one():
    writer = dict((n, w) for n, w, _ in FORMATS)["stability_matrix_png"]
    record = record_of(probe_image(writer(PICTURE, GEN)[0]).items)
    assert record.prompt == GEN.prompt and record.extra["typed_prompt"].startswith(
        "# 参考: テスト\n"
    )


def test_fooocus_stores_what_it_encoded_and_keeps_the_typed_prompt():
    writer = dict((n, w) for n, w, _ in FORMATS)["fooocus_png"]
    record = record_of(probe_image(writer(PICTURE, GEN)[0]).items)
    assert record.prompt == encoded_prompt("fooocus_png", GEN) and " BREAK " in record.prompt
    assert record.extra["typed_prompt"] == GEN.prompt


# ---------------------------------------------------------------- every writer, any prompt


VOCAB = [
    "cat",
    "猫",
    "テスト",
    "café",
    "🌸✨",
    "(word:1.2)",
    "{braces}",
    '"quoted"',
    "'single'",
    "-style",
    "--ar",
    "-s 50",
    "a-b",
    "x" * 60,
    "((((nested))))",
    "\\(escaped\\)",
    "#tag",
    "colon: value",
    "100%",
    "back\\slash",
]
BRACKETS = ["[bracket]", "[[deep]]"]
# Writers where a [bracketed span] is the negative prompt: brackets are not prompt text there.
BRACKET_NEGATIVE = ("invokeai_v2", "invokeai_dream", "invokeai_legacy_both")


def _random_prompt(rng: random.Random, brackets: bool) -> str:
    words = VOCAB + (BRACKETS if brackets else [])
    return ", ".join(
        " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
        for _ in range(rng.randint(1, 6))
    )


@pytest.mark.parametrize(
    "name, writer",
    [(n, w) for n, w, g in FORMATS if g != "none"],
    ids=[n for n, _, g in FORMATS if g != "none"],
)
def test_any_prompt_written_by_any_writer_is_read_back_exactly(name, writer):
    rng = random.Random(name)
    for _ in range(25):
        text = _random_prompt(rng, brackets=name not in BRACKET_NEGATIVE)
        spec = PromptSpec("cat", "red", "forest", text, "blurry")
        gen = Generation(
            spec=spec, seed=rng.randrange(2**32), steps=20, cfg=5.0, width=768, height=768
        )
        record = parse_generation(probe_image(writer(PICTURE, gen)[0]).items)
        assert record.prompt == encoded_prompt(name, gen), (name, gen.prompt)
        assert record.seed == gen.seed


# ---------------------------------------------------------------- hostile files, and the catalog
# check


HOSTILE = {
    "truncated JSON": [("sd-metadata", '{"image": {"prompt": [{"prompt": "a cat"')],
    "JSON nested 10,000 deep": [("parameters", '{"a": ' * 10_000 + "1" + "}" * 10_000)],
    "switch with no value": [("Dream", '"a cat" -s')],
    "no closing quote": [("Dream", '"a cat -s 5 -S 3')],
    "Civitai string nested deep": [
        (
            "parameters",
            json.dumps(
                {"6": {"class_type": "KSampler", "inputs": {}}, "extraMetadata": "[" * 10_000}
            ),
        )
    ],
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_metadata_is_recorded_with_a_reason_and_never_becomes_a_prompt(case):
    record = record_of(png_items(HOSTILE[case]))
    assert record.warnings, "the reason is recorded"
    assert record.prompt in (None, "a cat"), record.prompt
    assert record.raw, "the metadata is kept verbatim"


def test_odd_length_utf16_user_comment_is_read_without_crashing():
    from luna_core.samples.writers.registry import jpeg_bytes, tiff_block

    # one byte too many
    text = json.dumps(civitai_generator_record(GEN)).encode("utf-16-be") + b"\x7b"
    exif = b"Exif\x00\x00" + tiff_block({}, {0x9286: (7, b"UNICODE\x00" + text)}, big_endian=False)
    record = record_of(probe_image(jpeg_bytes(PICTURE, [exif])).items)
    assert record.prompt in (None, GEN.prompt)
    truncated = record_of({"exif:UserComment": json.dumps(civitai_generator_record(GEN))[:-1]})
    assert truncated.prompt is None and truncated.warnings


def test_the_catalog_check_finds_leaked_text(tmp_path):
    from luna_core.catalog.connection import open_catalog

    catalog = tmp_path / "catalog.duckdb"
    with open_catalog(catalog) as con:
        rows = [
            ("a", "a cat", None),
            ("b", 'a cat" -s 50 -S 42 -W 512', None),
            ("c", '{"prompt": "x"}', None),
            ("d", None, 'text ["6", 0]'),
            ("e", "#テスト".encode().decode("latin-1"), None),
            ("f", "a cat -style, -s 5 kind", "café"),
            ("g", "a __colors__ cat, __pose__", None),
            ("h", "snake_case_tags, __init__like_word", None),
        ]
        for key, prompt, negative in rows:
            con.execute(
                "INSERT INTO generations (content_hash, generator, prompt, negative_prompt, "
                "parsed_at) "
                "VALUES (?, ?, ?, ?, now())",
                [key, "x", prompt, negative],
            )
    audit = audit_prompts(catalog)
    assert audit.found == {
        "command-line switch": 1,
        "JSON fragment": 1,
        "ComfyUI node link": 1,
        "mojibake": 1,
        "wildcard template": 1,
    }
    examples = {e["content_hash"] for e in audit.examples}
    assert not audit.passed and examples == {"b", "c", "d", "e", "g"}


@pytest.mark.parametrize(
    "name",
    [
        "invokeai_dream",
        "invokeai_legacy_both",
        "civitai_generator_jpeg",
        "gradio_png",
        "comfy_prompt_expansion_png",
        "stability_matrix_png",
        "fooocus_png",
    ],
)
def test_the_six_give_every_setting_they_hold(name):
    writer = dict((n, w) for n, w, _ in FORMATS)[name]
    record = record_of(probe_image(writer(PICTURE, GEN)[0]).items)
    assert (record.seed, record.steps, record.cfg_scale) == (GEN.seed, GEN.steps, GEN.cfg)
    assert (record.width, record.height) == (GEN.width, GEN.height)
    assert record.sampler
    if name != "invokeai_dream":  # a Dream line names no model
        assert record.model
