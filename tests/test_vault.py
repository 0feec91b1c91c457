"""The vault: incremental, crash-safe, concurrent, and honest about bad input."""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import duckdb
import numpy as np
import pytest

from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.models.profiles import resolve_profile
from luna_core.samples import SampleLibrary
from luna_core.vault.checks import check_store
from luna_core.vault.embed import EmbedOptions, embed_images
from luna_core.vault.embed_prompts import embed_prompts
from luna_core.vault.store import RowStore

QUIET = EmbedOptions(progress=False, batch_size=8)


def rows(db: Path, sql: str, params=()) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def visible_vision_rows(home: LunaHome, key: str) -> tuple[list[str], np.ndarray]:
    """What a reader sees: committed rows only, looked up through the catalog."""
    mapping = rows(
        home.catalog_path,
        'SELECT content_hash, "row" FROM vision_rows WHERE store_key = ? ORDER BY 2',
        (key,),
    )
    import zarr

    array = zarr.open_group(str(home.vault_dir / "vision" / f"{key}.zarr"), mode="r")["embeds"]
    return [h for h, _ in mapping], array[[r for _, r in mapping]].astype(np.float32)


def test_every_image_and_unique_prompt_gets_exactly_one_row(tiny_home: LunaHome):
    profile = resolve_profile("tiny", tiny_home.models_dir)
    vision = embed_images(tiny_home, profile, QUIET)
    text = embed_prompts(tiny_home, profile, QUIET)
    ((n_images,),) = rows(
        tiny_home.catalog_path,
        "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'",
    )
    ((n_prompts,),) = rows(tiny_home.catalog_path, "SELECT count(*) FROM prompts")
    ((n_uses,),) = rows(
        tiny_home.catalog_path, "SELECT count(prompt) + count(negative_prompt) FROM generations"
    )
    assert vision.added == n_images and text.added == n_prompts
    assert n_prompts < n_uses, "prompts shared by several images are stored once"
    hashes, embeds = visible_vision_rows(tiny_home, profile.vision_key)
    assert len(set(hashes)) == n_images
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1, atol=0.01)
    ((long_prompts,),) = rows(
        tiny_home.catalog_path,
        "SELECT count(*) FROM text_rows WHERE truncated AND token_count > 77",
    )
    assert long_prompts >= 1 and long_prompts == text.truncated
    for report in (vision, text):
        outcomes = check_store(tiny_home, profile, report.kind, report.new_rows)
        assert all(o.passed for o in outcomes), outcomes


def test_rerun_with_nothing_new_loads_no_model_and_new_images_embed_alone(
    tiny_home: LunaHome, sample_library: SampleLibrary, monkeypatch
):
    profile = resolve_profile("tiny", tiny_home.models_dir)
    embed_images(tiny_home, profile, QUIET)
    embed_prompts(tiny_home, profile, QUIET)

    import luna_core.models.encoders as encoders

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded with nothing to do")

    with monkeypatch.context() as patch:
        patch.setattr(encoders, "VisionEncoder", no_model)
        patch.setattr(encoders, "SDXLTextEncoder", no_model)
        started = time.perf_counter()
        again = embed_images(tiny_home, profile, QUIET)
        text_again = embed_prompts(tiny_home, profile, QUIET)
        assert time.perf_counter() - started < 2.0
    assert (again.added, text_again.added) == (0, 0)
    assert again.already_present > 0

    from luna_core.samples.pictures import PromptSpec, draw_picture
    from luna_core.samples.writers.registry import Generation, write_a1111_png

    spec = PromptSpec("robot", "green", "ocean", "a brand new style", "")
    data, _ = write_a1111_png(draw_picture(spec, 5, (96, 96)), Generation(spec=spec, seed=5))
    (sample_library.root / "fresh.png").write_bytes(data)
    ingest(
        tiny_home.catalog_path, [str(sample_library.root)], IngestOptions(workers=1, progress=False)
    )
    assert embed_images(tiny_home, profile, QUIET).added == 1
    assert embed_prompts(tiny_home, profile, QUIET).added == 1


def _corrupt_idat(png: bytes) -> bytes:
    """Garble the compressed pixels but keep every chunk CRC valid: ingest reads it, decoding
    fails."""
    at = png.index(b"IDAT")
    length = struct.unpack(">I", png[at - 4 : at])[0]
    body = bytearray(png[at + 4 : at + 4 + length])
    body[2 : len(body) - 4] = bytes(len(body) - 6)  # zero the deflate stream after its header
    body[2] = 0xFF
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(body)))
    return png[: at + 4] + bytes(body) + crc + png[at + 8 + length :]


def test_a_warmed_worker_process_embeds_without_loading_a_model(tiny_home: LunaHome, monkeypatch):
    """What a Celery pool child does as it starts (luna_assets.executor): the steps then find
    the models it loaded."""
    import luna_core.vault.embed as embed
    import luna_core.vault.embed_prompts as prompts

    monkeypatch.setattr(embed, "_ENCODERS", {})
    tiny_home.set_setting("models", "profile", "tiny")
    loaded = prompts.warm_encoders(tiny_home)
    profile = tiny_home.profile()
    assert loaded == [profile.vision_model, profile.sdxl_model]
    warmed = dict(embed._ENCODERS)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded again")

    monkeypatch.setattr(embed.VisionEncoder, "__init__", no_model)
    monkeypatch.setattr(prompts.SDXLTextEncoder, "__init__", no_model)
    assert embed_images(tiny_home, profile, QUIET).added > 0
    assert embed_prompts(tiny_home, profile, QUIET).added > 0
    assert embed._ENCODERS == warmed


def test_image_that_no_longer_decodes_is_recorded_and_the_batch_goes_on(
    tiny_home: LunaHome, sample_library
):
    victim = sample_library.images[0].path
    assert victim.suffix == ".png"
    victim.write_bytes(_corrupt_idat(victim.read_bytes()))
    ingest(
        tiny_home.catalog_path, [str(sample_library.root)], IngestOptions(workers=1, progress=False)
    )
    profile = resolve_profile("tiny", tiny_home.models_dir)
    report = embed_images(tiny_home, profile, QUIET)
    assert report.failed == 1 and report.added > 10
    ((reason, detail, path),) = rows(
        tiny_home.catalog_path, "SELECT reason, detail, path FROM embedding_failures"
    )
    assert (reason, path) == ("decode_failed", str(victim)) and detail
    again = embed_images(tiny_home, profile, QUIET)
    assert (again.added, again.failed) == (0, 0), (
        "a recorded failure is not retried until the file changes"
    )
    outcomes = check_store(tiny_home, profile, "vision")
    assert all(o.passed for o in outcomes)


def test_unusual_prompts_are_encoded_and_recorded(tiny_home: LunaHome):
    odd = [
        "",
        "   \t ",
        "x" * 10_000,
        "猫と犬 🐈‍⬛ Ωmega café\u0301 \u202eright-to-left\u202c zero\u200bwidth",
    ]
    with duckdb.connect(str(tiny_home.catalog_path)) as con:
        for i, text in enumerate(odd):
            con.execute(
                "INSERT INTO generations (content_hash, generator, prompt, parsed_at) VALUES (?, "
                "'test', ?, now())",
                [f"{i:064x}", text],
            )
    profile = resolve_profile("tiny", tiny_home.models_dir)
    embed_prompts(tiny_home, profile, QUIET)
    found = dict(
        rows(
            tiny_home.catalog_path,
            """
        SELECT p.prompt, t.token_count FROM prompts p JOIN text_rows t USING (prompt_hash)""",
        )
    )
    assert set(odd) <= set(found)
    assert found[""] == 2 and found["   \t "] == 2  # start and end tokens only
    assert found["x" * 10_000] > 77


def test_model_whose_widths_disagree_with_the_store_is_refused_before_any_work(
    tiny_home: LunaHome, tmp_path
):
    profile = resolve_profile("tiny", tiny_home.models_dir)
    embed_images(tiny_home, profile, QUIET)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    other = tmp_path / "other_vision"
    shutil.copytree(profile.vision_model, other)
    CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            projection_dim=16,
        )
    ).save_pretrained(other)
    from dataclasses import replace

    # same identity (id + revision), other widths
    impostor = replace(profile, vision_model=str(other))
    with duckdb.connect(str(tiny_home.catalog_path)) as con:  # one image left to embed
        con.execute('DELETE FROM vision_rows WHERE "row" = (SELECT max("row") FROM vision_rows)')
    before = rows(tiny_home.catalog_path, "SELECT count(*) FROM vision_rows")
    with pytest.raises(LunaConfigError, match="shapes"):
        embed_images(tiny_home, impostor, QUIET)
    assert rows(tiny_home.catalog_path, "SELECT count(*) FROM vision_rows") == before


def test_killed_materialization_reruns_to_exactly_one_row_each(tiny_home: LunaHome):
    """SIGKILL from another process while the vision asset runs, then a rerun: nothing twice, no
    garbage. The child commits each batch and stops in its third model call until it is killed:
    no clock."""
    script = textwrap.dedent(f"""
        import sys, dagster as dg
        import luna_core.models.encoders as encoders
        from luna_core.vault import commits
        from luna_assets.definitions import build_definitions
        from luna_assets.resources import LunaModelsResource

        commits.Committer.maybe_commit = commits.Committer.commit  # every batch committed at once
        original, calls = encoders.VisionEncoder.embed_pixels, []
        def stuck_on_the_third(self, pixels):
            calls.append(1)
            if len(calls) == 3:
                print("stuck", flush=True)
                sys.stdin.readline()  # the parent kills us here, mid-run
            return original(self, pixels)
        encoders.VisionEncoder.embed_pixels = stuck_on_the_third
        defs = build_definitions({str(tiny_home.root)!r}, LunaModelsResource(vision_batch_size=4))
        job = defs.resolve_implicit_global_asset_job_def()
        job.execute_in_process(
            asset_selection=[dg.AssetKey("vision_embeddings")],
            instance=dg.DagsterInstance.ephemeral(),
        )
        print("finished", flush=True)
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        lines = iter(child.stdout.readline, "")
        assert (
            next((line.strip() for line in lines if line.strip() in ("stuck", "finished")), None)
            == "stuck"
        )
        from luna_core.catalog.connection import open_catalog

        with open_catalog(tiny_home.catalog_path, read_only=True) as con:
            committed = con.execute("SELECT count(*) FROM vision_rows").fetchone()[0]
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
    assert committed == 8, "two batches of four were committed before the kill"
    profile = resolve_profile("tiny", tiny_home.models_dir)
    report = embed_images(tiny_home, profile, QUIET)
    assert report.added > 0
    hashes, embeds = visible_vision_rows(tiny_home, profile.vision_key)
    ((n_images,),) = rows(
        tiny_home.catalog_path,
        "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'",
    )
    assert len(hashes) == len(set(hashes)) == n_images, "every image embedded exactly once"
    norms = np.linalg.norm(embeds, axis=1)
    assert np.all(np.abs(norms - 1) < 0.01), "no zero or garbage rows visible"
    outcomes = check_store(tiny_home, profile, "vision")
    assert all(o.passed for o in outcomes), outcomes


def test_row_store_refuses_other_shapes_and_grows_by_shards(tmp_path: Path):
    from luna_core.vault.store import Layout

    layout = Layout(rows_per_chunk=2, rows_per_shard=8)
    store = RowStore.open(tmp_path / "s.zarr", {"a": (3,)}, layout)
    store.write(0, {"a": np.ones((5, 3))})
    assert store.capacity == 8
    store.write(5, {"a": np.full((4, 3), 2.0)})
    assert store.capacity == 16
    np.testing.assert_array_equal(
        store.read("a", np.array([8, 0, 5])), [[2, 2, 2], [1, 1, 1], [2, 2, 2]]
    )
    with pytest.raises(LunaConfigError, match="shape"):
        RowStore.open(tmp_path / "s.zarr", {"a": (4,)}, layout)
    # The fast row reader (straight from shard files) agrees with zarr, duplicates and unwritten
    # rows included.
    rows = np.array([8, 0, 5, 0, 15, 3])
    assert store._shard_reader("a") is not None, "chunks of several rows take the fast path too"
    np.testing.assert_array_equal(store.read_rows("a", rows), store.read("a", rows))
    # chunks checked: rows alone
    np.testing.assert_array_equal(store.read_rows("a", rows), store.read("a", rows))
    text = RowStore.open(
        tmp_path / "t.zarr", {"e": (3, 4)}, Layout(rows_per_chunk=1, rows_per_shard=4)
    )
    text.write(0, {"e": np.arange(6 * 12, dtype=np.float32).reshape(6, 3, 4)})
    assert text._shard_reader("e") is not None, "row-wide chunks take the fast path"
    rows = np.array([5, 1, 1, 7, 4])
    np.testing.assert_array_equal(text.read_rows("e", rows), text.read("e", rows))
    second_writer = textwrap.dedent(f"""
        from luna_core.vault.store import RowStore, Layout
        s = RowStore.open({str(tmp_path / "s.zarr")!r}, {{"a": (3,)}}, Layout(2, 8))
        with s.writer(): pass
    """)
    with store.writer():
        refused = subprocess.run(
            [sys.executable, "-c", second_writer], capture_output=True, text=True
        )
    assert refused.returncode != 0 and "is being written by pid" in refused.stderr
    assert subprocess.run([sys.executable, "-c", second_writer]).returncode == 0  # free again


def test_catalog_waits_for_another_process_holding_it(tmp_path: Path):
    """A second process waits for the catalog while the first holds it, and gets it once released; a
    short timeout is a clear BusyError. The holder lets go only when told to: no clock involved."""
    from locking import hold_in_child, waits_then_gets

    from luna_core.catalog.connection import open_catalog
    from luna_core.errors import BusyError

    db = tmp_path / "c.duckdb"
    with open_catalog(db):
        pass
    holder = hold_in_child(
        "from luna_core.catalog.connection import open_catalog\n", f"open_catalog({str(db)!r})"
    )
    try:
        with pytest.raises(BusyError, match="locked"):
            with open_catalog(db, timeout_s=0.2):
                pass
        logged, blocked, got_it = waits_then_gets(
            holder, lambda: open_catalog(db), "waiting for the catalog lock"
        )
        assert logged, "the second opener says it is waiting"
        assert blocked, "it did not get the catalog while the holder held it"
        assert got_it
    finally:
        holder.communicate(timeout=60)


@pytest.mark.parametrize("kind", ["vision", "text"])
def test_a_deleted_store_is_rebuilt_by_the_next_run(tiny_home: LunaHome, kind):
    """`rm -rf <home>/vault/<kind>`, then the asset again: the store is recreated from the catalog
    and the library, every item once, every check passing (no Dagster invariant error)."""
    import shutil

    import dagster as dg

    from luna_assets.defs.vault.assets import text_conditionings, vision_embeddings
    from luna_assets.resources import LunaHomeResource, LunaModelsResource

    asset = vision_embeddings if kind == "vision" else text_conditionings
    resources = {"luna": LunaHomeResource(home=str(tiny_home.root)), "models": LunaModelsResource()}
    first = dg.materialize([asset], resources=resources, instance=dg.DagsterInstance.ephemeral())
    added = (
        first.asset_materializations_for_node(asset.key.path[-1])[0].metadata["rows added"].value
    )
    shutil.rmtree(tiny_home.vault_dir / kind)
    again = dg.materialize([asset], resources=resources, instance=dg.DagsterInstance.ephemeral())
    assert again.success
    assert (
        again.asset_materializations_for_node(asset.key.path[-1])[0].metadata["rows added"].value
        == added
    )
    assert all(c.passed for c in again.get_asset_check_evaluations())


def test_damaged_rows_are_errors_never_answers(tmp_path):
    """A few garbage bytes in a shard: reads through the fast row path and through zarr both refuse,
    naming the store, instead of returning NaN or zeros."""
    from luna_core.errors import CorruptStoreError
    from luna_core.vault.store import Layout

    store = RowStore.open(
        tmp_path / "t.zarr", {"e": (3, 4)}, Layout(rows_per_chunk=1, rows_per_shard=4)
    )
    store.write(0, {"e": np.arange(4 * 12, dtype=np.float32).reshape(4, 3, 4)})
    np.testing.assert_array_equal(
        store.read_rows("e", np.array([2])), store.read("e", np.array([2]))
    )
    np.testing.assert_array_equal(
        store.read_rows("e", np.array([1])), store.read("e", np.array([1]))
    )
    shard = tmp_path / "t.zarr" / "e" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    # inside row 1 (row 0 is bytes 0-27 plus its 4-byte checksum)
    data[30:34] = bytes([0x00, 0x7E, 0x00, 0x7E])
    replacement = shard.with_name("damaged")
    replacement.write_bytes(bytes(data))
    replacement.replace(shard)  # as zarr writes a shard: a new file renamed over the old one
    # The reader that checked row 1's chunk before sees a new file and checks it again.
    with pytest.raises(CorruptStoreError, match="checksum"):
        store.read_rows("e", np.array([1]))
    reopened = RowStore.open_readonly(
        tmp_path / "t.zarr", Layout(rows_per_chunk=1, rows_per_shard=4)
    )
    np.testing.assert_array_equal(
        reopened.read_rows("e", np.array([0])), store.read("e", np.array([0]))
    )
    for read in (reopened.read_rows, reopened.read):
        with pytest.raises(CorruptStoreError, match="t.zarr"):
            read("e", np.array([1]))


def test_a_damaged_text_store_fails_its_check_and_the_query(library_home, sample_library):
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.errors import CorruptStoreError
    from luna_core.index.build import update_index

    home, profile = library_home
    update_index(home, profile)
    for shard in (home.text_store(profile) / "prompt_embeds" / "c").rglob("0"):
        if shard.is_file():
            data = bytearray(shard.read_bytes())
            # the shard index at the end stays intact: only rows are damaged
            index_bytes = 64 * 16 + 4
            for position in range(0, len(data) - index_bytes, 997):
                data[position] ^= 0x55
            shard.write_bytes(bytes(data))
    outcomes = {o.name: o for o in check_store(home, profile, "text")}
    assert (
        not outcomes["no_nan_or_inf"].passed
        and "damaged chunk" in outcomes["no_nan_or_inf"].description
    )
    with pytest.raises(CorruptStoreError, match="checksum"):
        VaultQuery(home, profile).condition(sample_library.images[0].path, k=3)


def test_a_store_written_before_checksums_is_migrated(tmp_path):
    """A store whose arrays carry no checksum (as Luna wrote them before) gains a CRC32C per chunk
    with the same values; afterwards damage is detected."""
    import zarr

    from luna_core.errors import CorruptStoreError
    from luna_core.vault.store import Layout

    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="a")
    array = group.create_array(
        "e",
        shape=(0, 3, 4),
        chunks=(1, 3, 4),
        shards=(4, 3, 4),
        dtype="float16",
        fill_value=0,
        compressors=None,
    )
    values = np.arange(6 * 12, dtype=np.float32).reshape(6, 3, 4)
    array.resize((8, 3, 4))
    array[0:6] = values
    store = RowStore.open_readonly(tmp_path / "old.zarr", layout)
    assert not store.checksummed
    assert store.add_checksums() == ["e"] and store.checksummed
    np.testing.assert_array_equal(store.read("e", np.arange(6)), values)
    np.testing.assert_array_equal(store.read_rows("e", np.array([5, 0])), values[[5, 0]])
    assert store.add_checksums() == [], "a second call has nothing to do"
    shard = tmp_path / "old.zarr" / "e" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError):
        RowStore.open_readonly(tmp_path / "old.zarr", layout).read_rows("e", np.array([4]))
