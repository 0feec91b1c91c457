"""The text store's codecs: int8's per-channel scales; pca-zstd's error bound, its fit, crash
safety and recode; both read paths; homes built with each."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from luna_core.errors import CorruptStoreError, LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import resolve_profile
from luna_core.vault.basis_codec import TARGET_COSINE_ERROR, Basis
from luna_core.vault.checks import check_store
from luna_core.vault.codec import decode_int8, encode_int8
from luna_core.vault.embed import EmbedOptions
from luna_core.vault.embed_prompts import embed_prompts
from luna_core.vault.recode import recode_store
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


def _hidden_like(rng, rows: int, tokens: int = 77, width: int = 96) -> np.ndarray:
    """Rows shaped like CLIP hidden states: a start token alike in every prompt, a per-position
    component, an outlier channel, token content of varied scale."""
    position = rng.normal(size=(tokens, width))
    content = rng.normal(size=(rows, tokens, width)) * rng.uniform(0.2, 3, size=(rows, tokens, 1))
    values = position + content
    values[:, :, 5] *= 40
    values[:, 0] = position[0] * 10
    return values.astype(np.float16)


def test_pca_zstd_keeps_every_token_within_its_bound_whatever_the_fit():
    rng = np.random.default_rng(3)
    rows = _hidden_like(rng, 24)
    for fitted_on in (rows, rows[:1]):  # a fit on one row codes worse, never wrongly
        basis = Basis.fit(fitted_on)
        assert basis.valid()
        codes, worst = basis.encode(rows)
        assert codes.dtype == np.uint8 and codes.shape == (24, 77, 2 * 96 + 1)
        # the outlier channel needs codes beyond one byte: the high plane carries them
        assert codes[..., 96:-1].any()
        error = 1 - _cosine(basis.decode(codes), rows)
        assert error.max() <= 1e-3 and worst <= TARGET_COSINE_ERROR
        # the reported worst is the decoded one (float16 rounding aside)
        assert abs(error.max() - worst) < 1e-5
    zeros = np.zeros((1, 77, 96), np.float16)
    # a zero row has no cosine: it is kept at the finest step, near zero beside values of ~20
    assert np.abs(Basis.fit(rows).decode(Basis.fit(rows).encode(zeros)[0])).max() < 0.01
    broken = Basis(np.zeros((77, 96), np.float32), np.zeros((1, 96, 96), np.float32))
    assert not broken.valid(), "a fit a crash left as zeros is not a basis"


@pytest.mark.parametrize("codec", ["int8", "pca-zstd"])
def test_a_coded_store_reads_alike_on_both_paths_and_keeps_its_codec(tmp_path, codec):
    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    fields = {"e": (5, 8), "p": (8,)}
    store = RowStore.open(tmp_path / "t.zarr", fields, layout, codec=codec)
    rng = np.random.default_rng(1)
    values = {
        "e": rng.normal(size=(6, 5, 8)).astype(np.float16),
        "p": rng.normal(size=(6, 8)).astype(np.float16),
    }
    store.write(0, values)
    rows = np.array([5, 0, 3])
    np.testing.assert_array_equal(store.read_rows("e", rows), store.read("e", rows))
    np.testing.assert_array_equal(store.read("p", rows), values["p"][rows])
    assert _cosine(store.read("e", rows), values["e"][rows]).min() > 0.999
    reopened = RowStore.open_readonly(tmp_path / "t.zarr", layout)
    # scales and fits are the codec's, not fields
    assert reopened.fields == fields and reopened.codec == codec
    assert reopened.checksummed and reopened._shard_reader("e") is not None
    np.testing.assert_array_equal(reopened.read_rows("e", rows), store.read("e", rows))
    assert RowStore.open(tmp_path / "t.zarr", fields, layout, codec="float16").codec == codec
    # a weighted sum finished once equals the weighted sum of the decoded rows
    weights = np.array([0.2, 0.3, 0.4], np.float32)
    values, finish = reopened.read_rows_linear("e", rows)
    decoded = reopened.read_rows("e", rows).astype(np.float32)
    np.testing.assert_allclose(
        finish(np.einsum("i,itd->td", weights, values), weights.sum()),
        np.einsum("i,itd->td", weights, decoded),
        atol=5e-3,  # float16 rounding of the decoded rows
    )


def test_pca_zstd_fits_before_its_first_rows_and_a_crash_in_the_fit_refits(tmp_path):
    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    rows = _hidden_like(np.random.default_rng(4), 8)
    store = RowStore.open(tmp_path / "t.zarr", {"e": rows.shape[1:]}, layout, codec="pca-zstd")
    store.write(0, {"e": rows[:4]})
    first = np.asarray(store.group["e_basis"][...])
    store.write(4, {"e": rows[4:]})  # later rows use the fit the first rows were coded in
    np.testing.assert_array_equal(store.group["e_basis"][...], first)
    assert (1 - _cosine(store.read("e", slice(0, 8)), rows)).max() <= 1e-3
    # a crash while the fit was written (before any row): the next write fits again
    crashed = RowStore.open(tmp_path / "c.zarr", {"e": rows.shape[1:]}, layout, codec="pca-zstd")
    crashed.fit("e", rows)
    crashed.group["e_basis"][...] = 0
    again = RowStore.open(tmp_path / "c.zarr", {"e": rows.shape[1:]}, layout)
    again.write(0, {"e": rows[:2]})
    assert (1 - _cosine(again.read_rows("e", np.arange(2)), rows[:2])).max() <= 1e-3


@pytest.mark.parametrize(
    "codec, array, shard",
    [("int8", "e_scale", ("0", "0")), ("pca-zstd", "e", ("0", "0", "0"))],
)
def test_a_damaged_coded_row_is_an_error_never_an_answer(tmp_path, codec, array, shard):
    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    store = RowStore.open(tmp_path / "t.zarr", {"e": (77, 96)}, layout, codec=codec)
    store.write(0, {"e": _hidden_like(np.random.default_rng(5), 2)})
    path = tmp_path / "t.zarr" / array / "c" / "/".join(shard)
    data = bytearray(path.read_bytes())
    data[20] ^= 0x40
    path.write_bytes(bytes(data))
    reopened = RowStore.open_readonly(tmp_path / "t.zarr", layout)
    for read in (reopened.read_rows, reopened.read):
        with pytest.raises(CorruptStoreError, match="t.zarr"):
            read("e", np.array([0]))


def test_recode_rewrites_a_store_and_finishes_an_interrupted_swap(tmp_path, monkeypatch):
    layout = Layout(rows_per_chunk=1, rows_per_shard=4)
    rows = _hidden_like(np.random.default_rng(6), 10)
    path = tmp_path / "t.zarr"
    fields = {"e": rows.shape[1:], "p": (96,)}
    store = RowStore.open(path, fields, layout, attrs={"model": "m"}, codec="float16")
    store.write(0, {"e": rows, "p": rows[:, 1]})
    renames, real_rename = [], __import__("os").rename

    def crash_after_first_rename(src, dst):
        renames.append(dst)
        real_rename(src, dst)
        if len(renames) == 1:
            raise KeyboardInterrupt("killed between the renames")

    monkeypatch.setattr("luna_core.vault.recode.os.rename", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        recode_store(path, layout, "pca-zstd", say=lambda line: None)
    assert not path.exists()  # the old store moved aside, the new one not yet in place
    monkeypatch.undo()
    said = []
    assert recode_store(path, layout, "pca-zstd", say=said.append) == 0, "the swap is finished"
    recoded = RowStore.open_readonly(path, layout)
    assert recoded.codec == "pca-zstd" and recoded.group.attrs["luna"]["model"] == "m"
    assert (1 - _cosine(recoded.read_rows("e", np.arange(10)), rows)).max() <= 1e-3
    np.testing.assert_array_equal(recoded.read("p", slice(0, 10)), rows[:, 1])
    assert not list(tmp_path.glob("*.old")) and not list(tmp_path.glob("*.recode"))


@pytest.mark.parametrize("codec, most", [("int8", 0.6), ("pca-zstd", 0.3)])
def test_a_home_set_to_a_codec_stores_fewer_bytes_and_answers_alike(
    tiny_home: LunaHome, tmp_path, monkeypatch, codec, most
):
    profile = resolve_profile("tiny", tiny_home.models_dir)
    plain_home = LunaHome.resolve(tmp_path / "plain")
    shutil.copytree(tiny_home.root, plain_home.root, symlinks=True)
    compact = LunaHome.resolve(tmp_path / "compact")
    shutil.copytree(tiny_home.root, compact.root, symlinks=True)
    options = EmbedOptions(progress=False)
    plain_home.set_setting("vault", "text_codec", "float16")
    embed_prompts(plain_home, profile, options)
    compact.set_setting("vault", "text_codec", codec)
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

    plain_rows, compact_rows = rows_by_key(plain_home), rows_by_key(compact)
    assert plain_rows.keys() == compact_rows.keys()
    keys = sorted(plain_rows)
    plain = open_text_store(plain_home, profile).read_rows(
        "prompt_embeds", np.array([plain_rows[k] for k in keys])
    )
    coded = open_text_store(compact, profile).read_rows(
        "prompt_embeds", np.array([compact_rows[k] for k in keys])
    )
    assert open_text_store(compact, profile).codec == codec
    assert _cosine(coded, plain).min() > 0.999
    ratio = store_bytes(compact.text_store(profile)) / store_bytes(plain_home.text_store(profile))
    assert ratio < most, ratio
    monkeypatch.setenv("LUNA_TEXT_CODEC", "bf16")
    with pytest.raises(LunaConfigError, match="LUNA_TEXT_CODEC"):
        compact.text_codec()
