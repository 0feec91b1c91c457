"""Splits are decided once per image and stored; near-duplicates (resized, re-encoded copies; one
generation saved twice) share a split and are left out of each other's vault answers."""

from __future__ import annotations

import io
from pathlib import Path

import duckdb
import numpy as np
import pytest
from PIL import Image

from luna_core.catalog import splits
from luna_core.catalog.splits import hash_split, similar_pairs
from luna_core.vault.segments import open_vision_store


def _catalog(home, sql: str, params=None):
    with duckdb.connect(str(home.catalog_path), read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def _refresh(home, profile, root: Path) -> None:
    from luna_core.catalog.library_view import build_library
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    ingest(home.catalog_path, [str(root)], IngestOptions(workers=1, progress=False))
    embed_images(home, profile, EmbedOptions(progress=False))
    embed_prompts(home, profile, EmbedOptions(progress=False))
    build_library(home, profile)


def _copies(path: str, folder: Path) -> list[Path]:
    """A half-size copy and a JPEG re-encoding of `path`, both without the original's metadata."""
    with Image.open(path) as image:
        picture = image.convert("RGB")
    half = folder / f"{Path(path).stem}.half.png"
    picture.resize((picture.width // 2, picture.height // 2), Image.Resampling.LANCZOS).save(half)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=95)
    jpeg = folder / f"{Path(path).stem}.q95.jpg"
    jpeg.write_bytes(buffer.getvalue())
    return [half, jpeg]


def test_resized_and_reencoded_copies_join_their_original_and_stay_out_of_its_answers(
    library_home, sample_library
):
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.index.build import update_index
    from luna_core.reports.evaluate import leave_out
    from luna_core.reports.frozen_set import load_test_set

    home, profile = library_home
    originals = _catalog(
        home,
        """SELECT path, content_hash, split FROM library WHERE prompt_row IS NOT NULL
                                  AND path LIKE '%.png' ORDER BY split = 'test' DESC, split = 'val'
                                      DESC, image_id
                                  LIMIT 3""",
    )
    assert originals[0][2] == "test", "the sample has a test image with an encoded prompt"
    folder = sample_library.root / "copies"
    folder.mkdir()
    made = {str(c): (h, s) for p, h, s in originals for c in _copies(p, folder)}
    _refresh(home, profile, sample_library.root)

    rows = dict(
        (p, (h, s, r))
        for p, h, s, r in _catalog(
            home,
            """
        SELECT i.path, i.content_hash, s.split, s.reason FROM images i JOIN splits s USING
            (content_hash)
        WHERE i.path LIKE ?""",
            [f"{folder}%"],
        )
    )
    assert set(rows) == set(made)
    for path, (original_hash, original_split) in made.items():
        copy_hash, split, reason = rows[path]
        assert split == original_split, f"{path}: {reason}"
        assert reason.startswith("near-duplicate of "), reason
        link = _catalog(
            home,
            """SELECT similarity FROM near_duplicates WHERE kind = 'vision' AND
                                 ((content_hash = ? AND twin_hash = ?) OR (content_hash = ? AND
                                     twin_hash = ?))""",
            [copy_hash, original_hash, original_hash, copy_hash],
        )
        assert link and link[0][0] >= profile.near_duplicate_cosine
    # Distinct pictures are not linked to the copies (the sample world has different subjects).
    others = _catalog(
        home,
        f"""SELECT count(*) FROM near_duplicates WHERE content_hash IN
        (SELECT content_hash FROM images WHERE path LIKE '{folder}%') AND twin_hash NOT IN
        ({", ".join(repr(h) for _, h, _ in originals)}) AND twin_hash NOT IN
        (SELECT content_hash FROM images WHERE path LIKE '{folder}%')""",
    )[0][0]
    assert others <= 2, "copies link to their original, hardly to anything else"

    # The report's leave-one-out leaves the copies out with the original: no answer finds them.
    update_index(home, profile)
    test_set = load_test_set(home, new_series=True)
    vault = VaultQuery(home, profile)
    ids = dict(_catalog(home, "SELECT content_hash, image_id FROM image_ids"))
    checked = 0
    for position, content_hash in enumerate(test_set.content_hashes):
        copies = {ids[rows[p][0]] for p, (h, _) in made.items() if h == content_hash}
        if not copies:
            continue
        image_id = int(test_set.pairs.image_ids[position])
        assert copies <= leave_out(test_set, image_id)
        embedding = open_vision_store(home, profile).read(
            "embeds", test_set.pairs.vision_rows[position : position + 1]
        )[0]
        neighbors = vault.nearest(
            embedding.astype(np.float32), 5, exclude=leave_out(test_set, image_id)
        )
        assert not ({n.image_id for n in neighbors} & (copies | {image_id}))
        checked += 1
    assert checked, "a test image with copies was checked"


def test_one_generation_saved_twice_shares_a_split(library_home, sample_library):
    """Same prompt and seed, different pixels (a re-save with another encoder): linked without
    vision."""
    home, profile = library_home
    path, content_hash, split, prompt, seed = _catalog(
        home,
        """
        SELECT path, content_hash, split, prompt, seed FROM library
        WHERE prompt IS NOT NULL AND seed IS NOT NULL AND path LIKE '%.png' ORDER BY image_id LIMIT
            1""",
    )[0]
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text(
        "parameters",
        f"{prompt}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: {seed}, Size: 64x64",
    )
    # unlike any sample picture
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    twin = sample_library.root / "resaved.png"
    Image.fromarray(noise).save(twin, pnginfo=info)
    _refresh(home, profile, sample_library.root)
    ((twin_split, reason),) = _catalog(
        home,
        """SELECT s.split, s.reason FROM images i JOIN splits s USING (content_hash)
                                              WHERE i.path = ?""",
        [str(twin)],
    )
    assert twin_split == split and reason == f"same prompt and seed as {content_hash[:12]}"


def test_an_image_without_twins_keeps_the_content_hash_rule(library_home):
    home, _ = library_home
    rows = _catalog(
        home, "SELECT content_hash, split FROM splits WHERE reason = 'content-hash bucket'"
    )
    assert rows and all(split == hash_split(h) for h, split in rows)
    assert (
        hash_split("00000000" + "f" * 56) == "train"
        and hash_split(f"{99:08x}" + "0" * 56) == "test"
    )


@pytest.mark.parametrize("approximate", [False, True])
def test_similar_pairs_finds_planted_copies_exactly_or_through_faiss(monkeypatch, approximate):
    rng = np.random.default_rng(0)
    known = rng.normal(size=(3000, 64)).astype(np.float32)
    known /= np.linalg.norm(known, axis=1, keepdims=True)
    # near copies
    new = known[[5, 77, 2048]] + rng.normal(scale=0.02, size=(3, 64)).astype(np.float32)
    # and unrelated vectors
    new = np.concatenate([new, rng.normal(size=(40, 64)).astype(np.float32)])
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    if approximate:
        monkeypatch.setattr(splits, "EXACT_PRODUCTS", 0)
    else:
        monkeypatch.setattr(splits, "BLOCK_ENTRIES", 3000 * 7)  # several blocks of new vectors
    pairs = similar_pairs(new, known, 0.95)
    assert sorted((i, j - len(new)) for i, j, _ in pairs) == [(0, 5), (1, 77), (2, 2048)]
    assert all(c >= 0.95 for _, _, c in pairs)


def test_typical_twins_tell_random_weights_from_a_library_with_copies():
    rng = np.random.default_rng(1)
    spread = rng.normal(size=(500, 64)).astype(np.float32)
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    # random weights: one shared direction dominates every embedding
    collapsed = spread * 0.05 + np.ones(64, np.float32)
    collapsed /= np.linalg.norm(collapsed, axis=1, keepdims=True)
    # a small library where a third of the pictures have two copies each
    copies = np.concatenate([spread[:20], spread[:10] + 0.001, spread[:10] - 0.001])
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    assert splits.typical_twins(spread, 0.95) == 0.0
    assert splits.typical_twins(copies, 0.95) < splits.IMPLAUSIBLE_TWINS
    assert splits.typical_twins(collapsed, 0.95) > 400


def test_embeddings_that_cannot_tell_pictures_apart_link_nothing(tiny_home):
    """At a threshold every pair reaches, linking would chain the library into one split (as
    random weights did: 27 train, 28 val); the splits stay the content-hash buckets instead."""
    from dataclasses import replace

    from luna_core.catalog.library_view import build_library
    from luna_core.vault.embed import EmbedOptions, embed_images

    profile = replace(tiny_home.profile(), near_duplicate_cosine=0.0)
    embed_images(tiny_home, profile, EmbedOptions(progress=False))
    report = build_library(tiny_home, profile).splits
    assert "do not tell pictures apart" in report.vision_unsure
    assert "vision" not in report.links
    rows = _catalog(tiny_home, "SELECT content_hash, split, reason FROM splits")
    by_hash = [h for h, _, reason in rows if reason == "content-hash bucket"]
    assert len(by_hash) > 0.8 * len(rows)
    assert all(split == hash_split(h) for h, split, r in rows if r == "content-hash bucket")
    counts = {s: sum(1 for _, split, _ in rows if split == s) for s in ("train", "val")}
    assert counts["train"] > 2 * counts["val"]
