"""Which of a writer's rules read a prompt: a ComfyUI file's core version (recorded by newer
frontends on each core node), else the file's date, picks the tokenizer; a setting still wins."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from luna_core.ingest.run import IngestOptions, ingest
from luna_core.metadata.comfyui import parse_comfyui
from luna_core.prompts.syntax import syntax_case_sql
from luna_core.samples.writers.registry import api_to_workflow, comfy_simple_graph
from tests.test_metadata_formats import GEN


def _workflow(version: str | None) -> str:
    workflow = api_to_workflow(comfy_simple_graph(GEN))
    if version is not None:
        for node in workflow["nodes"]:
            node["properties"] = {"cnr_id": "comfy-core", "ver": version}
    return json.dumps(workflow)


@pytest.mark.parametrize(
    "version, syntax",
    [("0.3.30", "comfy"), ("0.3.10", "comfy"), ("0.3.7", "comfy_words"), ("0.2.2", "comfy_words")],
)
def test_the_core_version_a_workflow_recorded_picks_the_tokenizer(version, syntax):
    record = parse_comfyui(json.dumps(comfy_simple_graph(GEN)), _workflow(version))
    assert record.extra["prompt_syntax"] == syntax
    assert version in record.extra["prompt_syntax_from"]


def test_a_version_between_the_two_rules_says_nothing():
    """0.3.8 and 0.3.9 came out around the change: the file's date decides then."""
    record = parse_comfyui(json.dumps(comfy_simple_graph(GEN)), _workflow("0.3.8"))
    assert "prompt_syntax" not in record.extra


def test_the_catalog_reads_old_files_by_the_old_tokenizer_and_a_setting_still_wins(
    sample_library, tmp_path: Path
):
    comfy = [f for f in sample_library.images if f.generator == "ComfyUI"]
    old, new = comfy[0].path, comfy[1].path
    when = datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp()
    os.utime(old, (when, when))
    db = tmp_path / "catalog.duckdb"
    ingest(db, [str(sample_library.root)], IngestOptions(workers=1, progress=False))
    with duckdb.connect(str(db), read_only=True) as con:
        rows = dict(
            con.execute(
                "SELECT i.path, g.prompt_syntax FROM images i JOIN generations g USING "
                "(content_hash) WHERE i.path IN (?, ?)",
                [str(old), str(new)],
            ).fetchall()
        )
    assert rows == {str(old): "comfy_words", str(new): "comfy"}
    with duckdb.connect() as con:
        con.execute("CREATE TABLE g (generator VARCHAR, extra JSON)")
        con.execute("""INSERT INTO g VALUES ('ComfyUI', '{"prompt_syntax": "comfy_words"}'),
                       ('ComfyUI', '{}'), ('AUTOMATIC1111', '{"prompt_syntax": "comfy"}')""")
        plain = [r[0] for r in con.execute(f"SELECT {syntax_case_sql()} FROM g").fetchall()]
        overridden = syntax_case_sql({"ComfyUI": "a1111"})
        forced = [r[0] for r in con.execute(f"SELECT {overridden} FROM g").fetchall()]
    assert plain == ["comfy_words", "comfy", "comfy"]
    assert forced == ["a1111", "a1111", "comfy"]


def _with_text_node(node: dict) -> str:
    graph = comfy_simple_graph(GEN)
    graph["20"] = node
    graph["6"]["inputs"]["text"] = ["20", 2 if "LoraTag" in node["class_type"] else 0]
    return json.dumps(graph)


def test_a_wildcard_node_s_populated_text_is_what_was_encoded():
    """Impact Pack's wildcard processor: the frontend fills populated_text before the run; the
    template is never the prompt, and without a populated text the prompt is unknown."""
    populated = {
        "class_type": "ImpactWildcardProcessor",
        "inputs": {
            "wildcard_text": "a __colour__ cat, __pose__",
            "populated_text": "a red cat, sitting",
            "mode": "populate",
            "seed": 3,
        },
    }
    assert parse_comfyui(_with_text_node(populated), None).prompt == "a red cat, sitting"
    unpopulated = {**populated, "inputs": {**populated["inputs"], "populated_text": ""}}
    record = parse_comfyui(_with_text_node(unpopulated), None)
    assert record.prompt is None and any("wildcard template" in w for w in record.warnings)


def test_a_lora_tag_node_hands_its_encoder_the_text_without_the_tags():
    tagged = {
        "class_type": "LoraTagLoader",
        "inputs": {
            "text": "a knight <lora:detail:0.6>, armor",
            "model": ["4", 0],
            "clip": ["4", 1],
        },
    }
    assert parse_comfyui(_with_text_node(tagged), None).prompt == "a knight , armor"
    # without such a node, stock ComfyUI encodes the tags as text: the prompt keeps them
    plain = comfy_simple_graph(GEN)
    plain["6"]["inputs"]["text"] = "a knight <lora:detail:0.6>, armor"
    assert parse_comfyui(json.dumps(plain), None).prompt == "a knight <lora:detail:0.6>, armor"


def test_a_catalog_made_under_another_parser_version_asks_for_its_prompts_again(tmp_path: Path):
    """The prompts view names the parser's version in each conditioning key: a catalog from an
    earlier version gets this version's view when it is next opened, so the prompts are encoded
    again by the rules as they are now."""
    from luna_core.catalog.connection import open_catalog
    from luna_core.prompts.syntax import PARSER_VERSION, conditioning_key

    catalog = tmp_path / "catalog.duckdb"
    with open_catalog(catalog) as con:
        con.execute(
            "INSERT INTO generations (content_hash, generator, prompt, parsed_at, prompt_syntax) "
            "VALUES ('h', 'ComfyUI', '(a cat:1.2)', now(), 'comfy')"
        )
        view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'prompts'").fetchone()[
            0
        ]
        old_view = view.replace(f"'/{PARSER_VERSION}'", "'/1'")
        con.execute(old_view.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1))
        con.execute("UPDATE schema_info SET value = '1' WHERE key = 'parser_version'")
        old = con.execute("SELECT prompt_hash FROM prompts").fetchone()[0]
    assert old == conditioning_key("(a cat:1.2)", "comfy/1")
    with open_catalog(catalog) as con:
        new = con.execute("SELECT prompt_hash FROM prompts").fetchone()[0]
        stored = con.execute("SELECT value FROM schema_info WHERE key = 'parser_version'")
        assert stored.fetchone()[0] == PARSER_VERSION
    assert new == conditioning_key("(a cat:1.2)", f"comfy/{PARSER_VERSION}") != old


def test_fooocus_plus_s_comment_chunk_is_read_by_fooocus_s_rules():
    """FooocusPlus writes Fooocus's record under capitalised keys in a PNG `Comment` chunk."""
    from luna_core.containers.probe import probe_image
    from luna_core.metadata.dispatch import parse_generation
    from luna_core.samples.writers.registry import png_bytes
    from tests.test_metadata_formats import PICTURE

    record = {
        "Prompt": "a red fox",
        "Negative Prompt": "",
        "Full Prompt": ["a red fox, cinematic", "a red fox, cinematic, intricate, highly detailed"],
        "Full Negative Prompt": [""],
        "Fooocus V2 Expansion": "a red fox, cinematic, intricate, highly detailed",
        "Styles": "['Fooocus V2', 'Fooocus Enhance']",
        "Seed": "123456",
        "Steps": 30,
        "Guidance Scale": 4.0,
        "Sampler": "dpmpp_2m_sde_gpu",
        "Scheduler": "karras",
        "Resolution": "(896, 1152)",
        "Base Model": "juggernautXL_v8Rundiffusion.safetensors",
        "Metadata Scheme": "simple",
        "Version": "FooocusPlus 1.0.8",
    }
    items = probe_image(png_bytes(PICTURE, text=[("Comment", json.dumps(record))])).items
    parsed = parse_generation(items)
    assert (parsed.generator, parsed.seed, parsed.steps) == ("FooocusPlus", 123456, 30)
    assert parsed.prompt == " BREAK ".join(record["Full Prompt"])
    assert parsed.extra["typed_prompt"] == "a red fox"


def test_a_save_node_s_evaluated_text_wins_where_the_walk_found_part_of_it():
    from luna_core.metadata.dispatch import parse_generation
    from luna_core.samples.writers.a1111 import a1111_infotext

    graph = comfy_simple_graph(GEN)
    # a node the walk cannot evaluate joined a style on: the graph holds only the first part
    graph["20"] = {"class_type": "SomeStyler", "inputs": {"style": "cinematic"}}
    graph["6"]["inputs"]["text"] = GEN.prompt.split(",")[0]
    items = {"prompt": json.dumps(graph), "parameters": a1111_infotext(GEN)}
    record = parse_generation(items)
    assert record.prompt == GEN.prompt
    assert "evaluated text" in record.extra["read_by"]["prompt"]


def test_a_kolors_graph_s_prompt_is_unknown_not_wrong():
    """Kolors conditions through ChatGLM3 with its own instruction template: no CLIP text."""
    graph = comfy_simple_graph(GEN)
    graph["6"] = {
        "class_type": "MZ_ChatGLM3_V2",
        "inputs": {"text": GEN.prompt, "chatglm3_model": ["30", 0]},
    }
    graph["30"] = {"class_type": "MZ_ChatGLM3Loader", "inputs": {"chatglm3_checkpoint": "x"}}
    record = parse_comfyui(json.dumps(graph), None)
    assert record.prompt is None and "ChatGLM3" in record.extra["prompt_unknown"]
    assert record.extra["prompt_given"] == [GEN.prompt]
