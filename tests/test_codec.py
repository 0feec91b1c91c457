"""The text store's int8 codec: per-channel scales, both read paths, a home built with it."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from luna_core.errors import CorruptStoreError, LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import resolve_profile
from luna_core.vault.checks import check_store
from luna_core.vault.codec import decode_int8, encode_int8
from luna_core.vault.embed import EmbedOptions
from luna_core.vault.embed_prompts import embed_prompts
from luna_core.vault.segments import open_text_store, store_bytes
from luna_core.vault.store import Layout, RowStore


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_each_channel_is_kept_within_half_a_step_of_its_own_scale():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(4, 77, 64)).astype(np.float16)
    rows[:, :, 3] *= (
        500  # an outlier channel, as CLIP hidden states have: it must not flatten the others
    )
    rows[2] = 0  # an all-zero row decodes to zeros, not NaN
    quantized, scale = encode_int8(rows)
    assert quantized.dtype == np.int8 and scale.shape == (4, 64) and scale.dtype == np.float16
    decoded = decode_int8(quantized, scale)
    step = scale.astype(np.float32)[:, None, :]
    assert np.all(
        np.abs(decoded.astype(np.float32) - rows.astype(np.float32))
        <= step / 2 + np.abs(rows) * 1e-3
    )
    assert not decoded[2].any() and np.isfinite(decoded).all()
    # Without the outlier channel's own scale, channel 0's values would all round to zero.
    assert np.corrcoef(decoded[0, :, 0], rows[0, :, 0])[0, 1] > 0.99
    plain = rng.normal(size=(2, 77, 64)).astype(np.float16)
    assert _cosine(decode_int8(*encode_int8(plain)), plain).min() > 0.999


def test_an_int8_store_reads_alike_on_both_paths_and_keeps_its_codec(tmp_path):
    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    fields = {"e": (5, 8), "p": (8,)}
    store = RowStore.open(tmp_path / "t.zarr", fields, layout, codec="int8")
    rng = np.random.default_rng(1)
    values = {
        "e": rng.normal(size=(6, 5, 8)).astype(np.float16),
        "p": rng.normal(size=(6, 8)).astype(np.float16),
    }
    store.write(0, values)
    # pooled rows stay float16
    assert store.group["e"].dtype == np.int8 and store.group["p"].dtype == np.float16
    rows = np.array([5, 0, 3])
    np.testing.assert_array_equal(store.read_rows("e", rows), store.read("e", rows))
    np.testing.assert_array_equal(store.read("p", rows), values["p"][rows])
    assert _cosine(store.read("e", rows), values["e"][rows]).min() > 0.999
    reopened = RowStore.open_readonly(tmp_path / "t.zarr", layout)
    # the scales are the codec's, not a field
    assert reopened.fields == fields and reopened.codec == "int8"
    assert reopened.checksummed
    # A float16 setting later does not change a store made with int8: its rows would be misread.
    assert RowStore.open(tmp_path / "t.zarr", fields, layout, codec="float16").codec == "int8"
    with pytest.raises(LunaConfigError, match="int4"):
        RowStore.open(tmp_path / "u.zarr", fields, layout, codec="int4")


def test_a_damaged_scale_is_an_error_never_an_answer(tmp_path):
    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    store = RowStore.open(tmp_path / "t.zarr", {"e": (3, 4)}, layout, codec="int8")
    store.write(0, {"e": np.arange(2 * 12, dtype=np.float32).reshape(2, 3, 4)})
    shard = tmp_path / "t.zarr" / "e_scale" / "c" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[1] ^= 0x40
    shard.write_bytes(bytes(data))
    reopened = RowStore.open_readonly(tmp_path / "t.zarr", layout)
    for read in (reopened.read_rows, reopened.read):
        with pytest.raises(CorruptStoreError, match="t.zarr"):
            read("e", np.array([0]))


def test_a_home_set_to_int8_stores_half_the_bytes_and_answers_alike(
    tiny_home: LunaHome, tmp_path, monkeypatch
):
    profile = resolve_profile("tiny", tiny_home.models_dir)
    compact = LunaHome.resolve(tmp_path / "compact")
    shutil.copytree(tiny_home.root, compact.root, symlinks=True)
    options = EmbedOptions(progress=False)
    embed_prompts(tiny_home, profile, options)
    compact.set_setting("vault", "text_codec", "int8")
    report = embed_prompts(compact, profile, options)
    assert all(o.passed for o in check_store(compact, profile, "text", report.new_rows))

    def rows_by_key(home):
        with duckdb.connect(str(home.catalog_path), read_only=True) as con:
            return dict(
                con.execute(
                    'SELECT prompt_hash, "row" FROM text_rows WHERE store_key = ?',
                    [profile.text_key],
                ).fetchall()
            )

    plain_rows, compact_rows = rows_by_key(tiny_home), rows_by_key(compact)
    assert plain_rows.keys() == compact_rows.keys()
    keys = sorted(plain_rows)
    plain = open_text_store(tiny_home, profile).read_rows(
        "prompt_embeds", np.array([plain_rows[k] for k in keys])
    )
    coded = open_text_store(compact, profile).read_rows(
        "prompt_embeds", np.array([compact_rows[k] for k in keys])
    )
    assert open_text_store(compact, profile).codec == "int8"
    assert _cosine(coded, plain).min() > 0.999
    ratio = store_bytes(compact.text_store(profile)) / store_bytes(tiny_home.text_store(profile))
    assert ratio < 0.6, ratio
    monkeypatch.setenv("LUNA_TEXT_CODEC", "bf16")
    with pytest.raises(LunaConfigError, match="LUNA_TEXT_CODEC"):
        compact.text_codec()
