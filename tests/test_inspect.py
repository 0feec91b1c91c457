"""`luna inspect`: what ingest would catalogue for a file, printed for a person or a script; and the
catalog records where each record was read."""

from __future__ import annotations

import json

import duckdb
from PIL import Image

from luna_cli.main import main
from luna_core.samples.pictures import PromptSpec
from luna_core.samples.writers.registry import (
    Generation,
    strip_png_text,
    write_a1111_stealth_png,
    write_civitai_jpeg,
    write_comfy_rgthree_png,
)

GEN = Generation(
    spec=PromptSpec("猫", "赤い", "森の中", "傑作 🌸", "ぼやけた"),
    seed=5,
    steps=24,
    cfg=5.5,
    loras=[("detail", 0.5)],
)


def _write(tmp_path, writer, name, strip=False):
    data, ext = writer(Image.new("RGB", (64, 64)), GEN)
    data = strip_png_text(data) if strip else data
    path = tmp_path / f"{name}.{ext}"
    path.write_bytes(data)
    return path


def test_inspect_prints_every_field_and_where_it_was_found(tmp_path, capsys):
    civitai = _write(tmp_path, write_civitai_jpeg, "civitai")
    assert main(["inspect", str(civitai)]) == 0
    out = capsys.readouterr().out
    for needle in (
        "generator:         Civitai",
        "source:            exif:UserComment",
        f"prompt:            {GEN.prompt}",
        "negative_prompt:   ぼやけた",
        "seed:              5",
        "steps:             24",
        "cfg_scale:         5.5",
        "loras:             detail:0.5",
        "model:             sd_xl_base_1.0",
    ):
        assert needle in out, needle


def test_inspect_json_and_raw_for_scripts(tmp_path, capsys):
    files = [
        _write(tmp_path, write_a1111_stealth_png, "stealth", strip=True),
        _write(tmp_path, write_comfy_rgthree_png, "rg"),
    ]
    assert main(["inspect", "--json", *map(str, files)]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["source"] for r in results] == ["alpha:stealth", "comfy:prompt"]
    assert all(r["prompt"] == GEN.prompt and "raw" not in r for r in results)
    assert main(["inspect", "--json", "--raw", str(files[1])]) == 0
    raw = json.loads(capsys.readouterr().out)["raw"]
    assert json.loads(raw["prompt"])["30:3"]["class_type"] == "KSampler", "the items verbatim"


def test_inspect_names_a_file_it_cannot_read_and_exits_1(tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 5)
    assert main(["inspect", str(bad)]) == 1
    out = capsys.readouterr().out
    assert str(bad) in out and "quarantined: truncated" in out


def test_the_catalog_records_where_each_generation_was_read(tiny_home):
    with duckdb.connect(str(tiny_home.catalog_path), read_only=True) as con:
        rows = dict(
            con.execute(
                """SELECT g.generator, min(g.source) FROM generations g GROUP BY 1"""
            ).fetchall()
        )
    assert rows["ComfyUI"].startswith(("comfy:", "exif:")) and rows["AUTOMATIC1111"]
    assert rows.get("none") is None, "a file without generation metadata has no source"
