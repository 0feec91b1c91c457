"""Shards of the library embedded apart (no catalog write, no shared lock), committed by one step,
read as one store: the same answers as the single-store path."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import duckdb
import pytest

from luna_core.vault.segments import Shard
from tests.codec_tolerance import assert_coded_alike


def _count(home, sql: str) -> int:
    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        return con.execute(sql).fetchone()[0]


def _answer(home, profile, image):
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.catalog.library_view import build_library
    from luna_core.index.build import update_index

    build_library(home, profile)
    update_index(home, profile)
    return VaultQuery(home, profile).condition(image, k=3)


def test_shards_written_apart_then_committed_answer_as_one_store_does(
    tiny_home, tmp_path, sample_library
):
    from luna_core.home.home import LunaHome
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.checks import check_store
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts
    from luna_core.vault.manifests import commit_segments

    profile = resolve_profile("tiny", tiny_home.models_dir)
    single = LunaHome.resolve(tmp_path / "single")
    shutil.copytree(tiny_home.root, single.root, symlinks=True)
    options = EmbedOptions(progress=False)
    embed_images(single, profile, options)
    embed_prompts(single, profile, options)

    # Two shards at once, in two processes: neither writes the catalog nor waits for the other's
    # lock.
    script = textwrap.dedent(f"""
        import sys
        from luna_core.models.profiles import resolve_profile
        from luna_core.home.home import LunaHome
        from luna_core.vault.embed import EmbedOptions, embed_images
        from luna_core.vault.embed_prompts import embed_prompts
        from luna_core.vault.segments import Shard
        home = LunaHome.resolve({str(tiny_home.root)!r})
        profile = resolve_profile("tiny", home.models_dir)
        shard = Shard.parse(sys.argv[1])
        embed_images(home, profile, EmbedOptions(progress=False), shard=shard)
        embed_prompts(home, profile, EmbedOptions(progress=False), shard=shard)
    """)
    workers = [subprocess.Popen([sys.executable, "-c", script, f"{i}/4"]) for i in (0, 1)]
    assert [w.wait(300) for w in workers] == [0, 0]
    for i in (2, 3):
        embed_images(tiny_home, profile, options, shard=Shard(i, 4))
        embed_prompts(tiny_home, profile, options, shard=Shard(i, 4))
    assert _count(tiny_home, "SELECT count(*) FROM vision_rows") == 0, (
        "shards never write the catalog"
    )

    # The chain's catalog step is the one committing step.
    import dagster as dg

    from luna_assets.defs.catalog.assets import luna_catalog
    from luna_assets.resources import LunaHomeResource, LunaModelsResource

    result = dg.materialize(
        [luna_catalog],
        resources={
            "luna": LunaHomeResource(home=str(tiny_home.root)),
            "models": LunaModelsResource(),
        },
    )
    committed = (
        result.asset_materializations_for_node("luna_catalog")[0]
        .metadata["segment rows committed"]
        .value
    )
    assert committed["vision"] == _count(single, "SELECT count(*) FROM vision_rows")
    assert committed["text"] == _count(single, "SELECT count(*) FROM text_rows")
    assert commit_segments(tiny_home, profile) == {"vision": 0, "text": 0}, "nothing left to commit"
    assert (
        _count(
            tiny_home,
            """SELECT count(*) FROM (SELECT DISTINCT content_hash FROM images WHERE status = 'ok')
                                ANTI JOIN vision_rows USING (content_hash)""",
        )
        == 0
    ), "every image has a row"
    assert (
        _count(tiny_home, "SELECT count(*) - count(DISTINCT content_hash) FROM vision_rows") == 0
    ), "exactly one"
    assert all(
        o.passed for kind in ("vision", "text") for o in check_store(tiny_home, profile, kind)
    ), [
        (o.name, o.description)
        for kind in ("vision", "text")
        for o in check_store(tiny_home, profile, kind)
    ]

    image = sample_library.images[0].path
    expected, answered = _answer(single, profile, image), _answer(tiny_home, profile, image)
    assert [n.path for n in answered.neighbors] == [n.path for n in expected.neighbors]
    # each segment and the single store fit their own pca-zstd basis
    assert_coded_alike(answered.prompt_embeds, expected.prompt_embeds)


def test_a_shard_run_that_dies_midway_is_finished_by_the_next_run(tiny_home, monkeypatch):
    import luna_core.models.encoders as encoders
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.manifests import commit_segments

    profile = resolve_profile("tiny", tiny_home.models_dir)
    shard = Shard(1, 2)
    options = EmbedOptions(progress=False, batch_size=4, commit_rows=1)
    original = encoders.VisionEncoder.embed_pixels
    calls = {"n": 0}

    def dies_on_the_third_batch(self, pixels):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("the machine went away")
        return original(self, pixels)

    monkeypatch.setattr(encoders.VisionEncoder, "embed_pixels", dies_on_the_third_batch)
    with pytest.raises(RuntimeError, match="went away"):
        embed_images(tiny_home, profile, options, shard=shard)
    monkeypatch.setattr(encoders.VisionEncoder, "embed_pixels", original)
    rerun = embed_images(tiny_home, profile, options, shard=shard)
    assert rerun.added > 0 and embed_images(tiny_home, profile, options, shard=shard).added == 0
    commit_segments(tiny_home, profile)
    in_shard = _count(
        tiny_home,
        f"""SELECT count(DISTINCT content_hash) FROM images i WHERE status = 'ok'
                                     AND {shard.sql("i.content_hash")}""",
    )
    assert _count(tiny_home, "SELECT count(*) FROM vision_rows") == in_shard == 8 + rerun.added


def test_a_shard_is_named_and_checked():
    from luna_core.errors import LunaConfigError

    assert Shard.parse("3/16") == Shard(3, 16) and Shard(3, 16).holds("00000013" + "0" * 56)
    assert Shard(0, 1).first_row == 1 << 50 | 1 << 40 and Shard(0, 1).name == "0001-0000"
    for bad in ("16/16", "x/2", "1/0", "1/2048"):
        with pytest.raises(LunaConfigError):
            Shard.parse(bad)


def test_status_says_when_shard_rows_wait_for_the_commit(tiny_home, capsys):
    from luna_cli.main import main
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.manifests import commit_segments

    profile = resolve_profile("tiny", tiny_home.models_dir)
    embed_images(tiny_home, profile, EmbedOptions(progress=False), shard=Shard(0, 2))
    commit_segments(tiny_home, profile)
    embed_images(tiny_home, profile, EmbedOptions(progress=False), shard=Shard(1, 2))
    assert main(["status", "--home", str(tiny_home.root)]) == 0
    assert "1 shard manifest(s) wait for luna_catalog's commit" in capsys.readouterr().out
    commit_segments(tiny_home, profile)
    assert main(["status", "--home", str(tiny_home.root)]) == 0
    assert "wait for luna_catalog" not in capsys.readouterr().out
