"""Every generator's layout, written as the tool writes it, parses into the same normalized
record."""

from __future__ import annotations

import json
import random

import pytest
from PIL import Image

from luna_core.containers.probe import probe_image
from luna_core.metadata.a1111 import parse_a1111, parse_settings_line
from luna_core.metadata.comfyui import parse_comfyui
from luna_core.metadata.dispatch import parse_generation
from luna_core.samples.pictures import PromptSpec
from luna_core.samples.writers.registry import (
    FORMATS,
    SOURCES,
    Generation,
    api_to_workflow,
    comfy_sdxl_hires_graph,
    comfy_simple_graph,
    encoded_prompt,
    png_bytes,
)

PICTURE = Image.new("RGB", (32, 32), (90, 90, 90))
SPEC = PromptSpec("cat", "red", "forest", "masterpiece, best quality", "blurry, lowres")
GEN = Generation(
    spec=SPEC,
    seed=3_141_592_653,
    steps=28,
    cfg=6.5,
    width=832,
    height=1216,
    model="juggernautXL_v9",
    model_hash="c9e3e68f89",
    loras=[("detail_tweaker_xl", 0.6)],
)


def parsed(writer):
    data, _ = writer(PICTURE, GEN)
    return parse_generation(probe_image(data).items)


@pytest.mark.parametrize("name, writer, generator", FORMATS, ids=[f[0] for f in FORMATS])
def test_every_format_parses_to_its_generator_prompt_and_seed(name, writer, generator):
    record = parsed(writer)
    assert record.generator == generator
    if generator == "none":
        assert record.prompt is None and record.seed is None
        return
    assert record.prompt == encoded_prompt(name, GEN), "the text the generator encoded"
    assert record.negative_prompt == SPEC.negative
    assert record.seed == GEN.seed
    assert record.steps == GEN.steps
    assert record.raw, "raw metadata is kept verbatim"
    assert not record.warnings
    assert record.source == SOURCES[name], "where the record was read"


def test_every_format_names_where_its_record_was_read():
    assert set(SOURCES) == {name for name, _, _ in FORMATS}


@pytest.mark.parametrize(
    "name, writer", [(n, w) for n, w, g in FORMATS if g not in ("none", "NovelAI")]
)
def test_cfg_and_size_are_read_where_the_format_has_them(name, writer):
    record = parsed(writer)
    assert record.cfg_scale == pytest.approx(GEN.cfg)
    assert (record.width, record.height) == (GEN.width, GEN.height)


@pytest.mark.parametrize(
    "name, writer",
    [
        (n, w)
        for n, w, g in FORMATS
        if n.split("_")[0]
        in (
            "a1111",
            "forge",
            "fooocus",
            "swarmui",
            "invokeai",
            "draw",
            "easy",
            "ruined",
            "civitai",
            "sdnext",
            "stability",
        )
        and n
        not in ("invokeai_v2", "invokeai_dream", "invokeai_legacy_both", "civitai_generator_jpeg")
    ],
)
def test_loras_name_and_weight(name, writer):
    record = parsed(writer)
    assert len(record.loras) == 1
    assert "detail_tweaker_xl" in record.loras[0].name
    assert record.loras[0].weight == pytest.approx(0.6)


def test_a1111_settings_line_with_quoted_commas_and_json_hashes():
    line = (
        "Steps: 30, Sampler: DPM++ 2M SDE, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: "
        "832x1216, "
        'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "add_detail: 7c6bad76eb54, '
        'grain: 2f7b6c1d", '
        'Hashes: {"model": "31e35c80fc", "lora:add_detail": "7c6bad76eb54"}, Wildcard prompt: "a '
        '\\"quoted\\", b", '
        "Version: v1.10.1"
    )
    pairs = dict(parse_settings_line(line))
    assert pairs["Lora hashes"] == "add_detail: 7c6bad76eb54, grain: 2f7b6c1d"
    assert json.loads(pairs["Hashes"]) == {"model": "31e35c80fc", "lora:add_detail": "7c6bad76eb54"}
    assert pairs["Wildcard prompt"] == 'a "quoted", b'
    assert pairs["Version"] == "v1.10.1"

    record = parse_a1111(
        "a cat <lora:add_detail:0.8>, <lyco:grain>\nwith a hat\nNegative prompt: ugly\nblurry\n"
        + line
    )
    assert record.prompt == "a cat , \nwith a hat"  # tags removed, the rest as A1111 encodes it
    assert record.negative_prompt == "ugly\nblurry"
    assert [(lora.name, lora.weight) for lora in record.loras] == [
        ("add_detail", 0.8),
        ("grain", 1.0),
    ]
    assert (record.sampler, record.scheduler, record.seed) == ("DPM++ 2M SDE", "Karras", 42)
    assert record.extra["Hashes"]["lora:add_detail"] == "7c6bad76eb54"
    assert record.model_hash == "31e35c80fc"


def test_a1111_old_sampler_names_carry_the_scheduler():
    record = parse_a1111(
        "a dog\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x512"
    )
    assert (record.sampler, record.scheduler) == ("DPM++ 2M", "Karras")
    assert record.negative_prompt is None


def test_a1111_prompt_without_settings_line_is_kept_with_a_warning():
    record = parse_a1111("just a prompt")
    assert record.prompt == "just a prompt"
    assert record.warnings


def test_forge_is_told_apart_from_a1111_by_its_version():
    assert (
        parse_a1111(
            "x\nSteps: 1, Seed: 2, Sampler: Euler, Version: f2.0.1v1.10.1-previous-6"
        ).generator
        == "Forge"
    )
    assert (
        parse_a1111("x\nSteps: 1, Seed: 2, Sampler: Euler, Version: v1.9.4").generator
        == "AUTOMATIC1111"
    )


def test_comfyui_records_every_sampler_and_picks_the_first_full_pass():
    api = comfy_sdxl_hires_graph(GEN)
    record = parse_comfyui(json.dumps(api), None)
    samplers = record.extra["samplers"]
    assert [s["node"] for s in samplers] == ["3", "12"]
    assert [s["denoise"] for s in samplers] == [1.0, 0.45]
    assert record.seed == GEN.seed and samplers[1]["seed"] == GEN.seed + 1
    assert record.model == "juggernautXL_v9.safetensors"
    assert [(lora.name, lora.weight) for lora in record.loras] == [
        ("detail_tweaker_xl.safetensors", 0.6)
    ]


def test_comfyui_sdxl_encoder_with_different_text_l_keeps_both():
    api = comfy_sdxl_hires_graph(GEN)
    api["6"]["inputs"]["text_l"] = "red cat"
    record = parse_comfyui(json.dumps(api), None)
    assert record.prompt == SPEC.prompt
    assert record.extra["text_l"] == ["red cat"]


def test_comfyui_negative_text_l_stays_with_the_negative():
    api = comfy_sdxl_hires_graph(GEN)
    negative_id = api["3"]["inputs"]["negative"][0]
    api[negative_id] = {
        "class_type": "CLIPTextEncodeSDXL",
        "inputs": {"text_g": "blurry", "text_l": "grainy", "clip": ["1", 1]},
    }
    record = parse_comfyui(json.dumps(api), None)
    assert record.negative_prompt == "blurry"
    assert "text_l" not in record.extra, "the negative's text_l leaked into the positive"
    assert record.extra["negative_text_l"] == ["grainy"]


def test_comfyui_graph_with_a_cycle_ends_and_finds_the_encoder():
    api = comfy_simple_graph(GEN)
    api["20"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["21", 0], "conditioning_2": ["6", 0]},
    }
    api["21"] = {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["20", 0]}}
    api["3"]["inputs"]["positive"] = ["20", 0]
    record = parse_comfyui(json.dumps(api), None)
    assert record.prompt == SPEC.prompt


def test_comfyui_controlnet_pair_node_is_followed_on_the_right_side():
    api = comfy_simple_graph(GEN)
    api["30"] = {
        "class_type": "ControlNetApplyAdvanced",
        "inputs": {
            "positive": ["6", 0],
            "negative": ["7", 0],
            "control_net": ["31", 0],
            "image": ["32", 0],
            "strength": 0.8,
        },
    }
    api["3"]["inputs"]["positive"] = ["30", 0]
    api["3"]["inputs"]["negative"] = ["30", 1]
    record = parse_comfyui(json.dumps(api), None)
    assert (record.prompt, record.negative_prompt) == (SPEC.prompt, SPEC.negative)


def test_comfyui_custom_sampler_found_by_its_input_names():
    api = comfy_simple_graph(GEN)
    node = api.pop("3")
    node["class_type"] = "MyFancyDiffusionNode"
    api["3"] = node
    record = parse_comfyui(json.dumps(api), None)
    assert record.prompt == SPEC.prompt and record.seed == GEN.seed


def test_comfyui_workflow_only_is_read_through_widget_layouts():
    record = parse_comfyui(None, json.dumps(api_to_workflow(comfy_simple_graph(GEN))))
    assert (record.prompt, record.negative_prompt, record.seed, record.steps) == (
        SPEC.prompt,
        SPEC.negative,
        GEN.seed,
        GEN.steps,
    )


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"3": {"class_type": "KSampler", "inputs": {', "not valid JSON"),
        ("[" * 50_000 + "]" * 50_000, "nested too deeply"),
        ('["not", "a", "graph"]', "not a JSON object"),
        ('{"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "lonely"}}}', "no sampler"),
        ('{"1": 5, "2": "x"}', "holds no nodes"),
    ],
)
def test_comfyui_bad_graphs_are_recorded_with_a_reason(text, needle):
    record = parse_generation({"prompt": text})
    assert record.generator == "ComfyUI"
    assert record.prompt is None
    assert any(needle in w for w in record.warnings), record.warnings


def test_random_garbage_metadata_never_raises():
    rng = random.Random(5)
    keys = [
        "parameters",
        "prompt",
        "workflow",
        "invokeai_metadata",
        "sd-metadata",
        "Dream",
        "Comment",
        "exif:UserComment",
        "xmp:UserComment",
        "sui_image_params",
    ]
    fragments = [
        "{",
        "}",
        "[",
        "]",
        '"',
        ":",
        ",",
        "1",
        "null",
        "Steps: 3",
        '"class_type"',
        '"inputs"',
        '"positive"',
        '["1", 0]',
        "Negative prompt:",
        "\x00",
        "é",
        '{"c": 1}',
        "-S",
        '"',
    ]
    for _ in range(400):
        text = "".join(rng.choice(fragments) for _ in range(rng.randrange(1, 40)))
        record = parse_generation(
            {rng.choice(keys): text, **({"Software": "NovelAI"} if rng.random() < 0.1 else {})}
        )
        assert isinstance(record.generator, str)


def test_novelai_fields():
    record = parsed(dict((n, w) for n, w, _ in FORMATS)["novelai"])
    assert (record.sampler, record.cfg_scale, record.model) == (
        "k_euler_ancestral",
        GEN.cfg,
        "Stable Diffusion XL C1E1DE52",
    )


def test_invokeai_bracket_negatives_in_v2_and_dream():
    writers = dict((n, w) for n, w, _ in FORMATS)
    for name in ("invokeai_v2", "invokeai_dream"):
        record = parsed(writers[name])
        assert (record.prompt, record.negative_prompt) == (SPEC.prompt, SPEC.negative), name


def test_no_metadata_and_unknown_metadata_are_told_apart():
    assert parse_generation({}).generator == "none"
    assert parse_generation({"Software": "GIMP"}).generator == "unknown"
    unknown = parse_generation({"Description": "holiday photo", "Author": "me"})
    assert unknown.generator == "unknown" and unknown.raw["Author"] == "me"


def test_png_with_a1111_text_in_latin1_and_utf8():
    data = png_bytes(
        PICTURE, text=[("parameters", "café au lait\nSteps: 20, Sampler: Euler, Seed: 9")]
    )
    assert parse_generation(probe_image(data).items).prompt == "café au lait"


JAPANESE = PromptSpec(
    "猫",
    "赤い",
    "森の中",
    "傑作, 最高品質 🌸✨",
    "ぼやけた, 低解像度 😿",
)


@pytest.mark.parametrize(
    "name, writer",
    [(n, w) for n, w, g in FORMATS if g != "none"],
    ids=[n for n, _, g in FORMATS if g != "none"],
)
def test_japanese_and_emoji_prompts_survive_every_writer(name, writer):
    gen = Generation(spec=JAPANESE, seed=42, steps=20, cfg=5.0, width=768, height=768)
    data, _ = writer(PICTURE, gen)
    record = parse_generation(probe_image(data).items)
    assert (
        record.prompt == encoded_prompt(name, gen) and record.negative_prompt == JAPANESE.negative
    )


def test_newer_graphs_resolve_encoders_concatenation_contexts_and_switches():
    from luna_core.samples.writers.registry import write_comfy_flux_png, write_comfy_rgthree_png

    flux = parsed(write_comfy_flux_png)
    assert (flux.sampler, flux.scheduler, flux.model) == (
        "euler",
        "simple",
        f"{GEN.model}.safetensors",
    )
    assert flux.extra["samplers"][0]["class_type"] == "SamplerCustomAdvanced"
    rgthree = parsed(write_comfy_rgthree_png)
    assert rgthree.prompt == SPEC.prompt, (
        "primitive + StringConcatenate + Power Prompt + Context + Any Switch"
    )
    assert rgthree.extra["samplers"][0]["node"] == "30:3", (
        "a sampler inside a subgraph keeps its flattened id"
    )


def test_a_comfy_save_node_s_text_fills_what_the_graph_does_not_say():
    from luna_core.samples.writers.registry import write_image_saver_png

    record = parsed(write_image_saver_png)
    assert record.generator == "ComfyUI" and record.source == "comfy:prompt"
    assert record.model_hash == GEN.model_hash, "only the saver's A1111 text carries the model hash"
    assert record.extra["saver_parameters"]["Hashes"] == {GEN.model: GEN.model_hash}


def test_civitai_resources_name_the_checkpoint_and_the_loras():
    from luna_core.samples.writers.registry import write_civitai_jpeg

    record = parsed(write_civitai_jpeg)
    assert record.model == GEN.model and [(lora.name, lora.weight) for lora in record.loras] == [
        ("detail_tweaker_xl", 0.6)
    ]


@pytest.mark.parametrize(
    "writer_name, generator",
    [("write_a1111_stealth_png", "AUTOMATIC1111"), ("write_novelai_stealth_png", "NovelAI")],
)
def test_stealth_metadata_survives_a_site_that_strips_the_text_chunks(writer_name, generator):
    from luna_core.samples.writers import registry as writers

    data, _ = getattr(writers, writer_name)(PICTURE, GEN)
    stripped = writers.strip_png_text(data)
    assert b"tEXt" not in stripped and b"iTXt" not in stripped
    record = parse_generation(probe_image(stripped).items)
    assert (record.generator, record.source) == (generator, "alpha:stealth")
    assert (record.prompt, record.negative_prompt, record.seed, record.steps) == (
        SPEC.prompt,
        SPEC.negative,
        GEN.seed,
        GEN.steps,
    )
    assert record.cfg_scale == pytest.approx(GEN.cfg)


def test_stealth_is_read_only_from_an_alpha_channel_with_nothing_else_and_is_bounded():
    from luna_core.containers.probe import ProbeLimits
    from luna_core.samples.writers.registry import a1111_infotext, hide_in_alpha

    hidden = hide_in_alpha(Image.new("RGBA", (160, 160), (10, 20, 30, 255)), a1111_infotext(GEN))
    assert "stealth:alpha" in probe_image(png_bytes(hidden)).items
    with_text = probe_image(
        png_bytes(hidden, text=[("parameters", "a cat\nSteps: 5, Seed: 1, Size: 8x8")])
    )
    assert "stealth:alpha" not in with_text.items, "a file with other metadata is never decoded"
    opaque = probe_image(png_bytes(Image.new("RGB", (160, 160))))
    assert "stealth:alpha" not in opaque.items and not opaque.warnings, "no alpha, no decode"
    tight = probe_image(png_bytes(hidden), ProbeLimits(max_text_bytes=64))
    assert "stealth:alpha" not in tight.items and "bound" in tight.warnings[0]


def test_a1111_text_in_a_jpeg_comment_or_an_xmp_description_is_read_and_says_where():
    import io
    from xml.sax.saxutils import escape

    from luna_core.samples.writers.registry import a1111_infotext, webp_bytes

    out = io.BytesIO()
    PICTURE.save(out, "JPEG", comment=a1111_infotext(GEN).encode("utf-8"))
    record = parse_generation(probe_image(out.getvalue()).items)
    assert (record.prompt, record.seed, record.source) == (SPEC.prompt, GEN.seed, "jpeg:COM")
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt>'
        "<rdf:li "
        f'xml:lang="x-default">{escape(a1111_infotext(GEN))}</rdf:li></rdf:Alt></dc:description>'
        "</rdf:Description></rdf:RDF></x:xmpmeta>"
    )
    record = parse_generation(probe_image(webp_bytes(PICTURE, xmp=xmp)).items)
    assert (record.prompt, record.seed, record.source) == (SPEC.prompt, GEN.seed, "xmp:description")
