"""The index and the vault's answers: choice, recall, versions, queries, conditionings, bad
input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from luna_core.ask.answers import load_image
from luna_core.ask.boxes import Box
from luna_core.ask.vault_query import QueryError, VaultQuery
from luna_core.catalog.library_view import build_library
from luna_core.index.build import update_index
from luna_core.index.faiss_index import (
    GIB,
    IndexSettings,
    build_index,
    exact_neighbors,
    plan_index,
    probing_every_list,
)
from luna_core.index.store import IndexStore, load_index
from luna_core.models.profiles import resolve_profile
from luna_core.vault.segments import open_text_store, open_vision_store


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, d))
    x = centers[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_index_choice_follows_size_and_budget():
    assert plan_index(1_000, 1024).kind == "flat"
    # A float16 re-ranking copy small enough stays in the index; past it, re-ranking reads the
    # vault.
    medium = plan_index(100_000, 512)
    assert medium.kind == "ivfsq8_refine" and medium.factory.endswith("Refine(SQfp16)")
    big = plan_index(500_000, 1024)
    assert big.kind == "ivfsq8_vault" and big.factory == "IVF2048_HNSW32,SQ8"
    # the 8-bit code, its ids and the lists alone
    assert big.estimated_bytes / 500_000 <= 1.1 * 1024
    everything_in_ram = plan_index(500_000, 1024, IndexSettings(rerank_in_ram_max_bytes=2 * GIB))
    assert everything_in_ram.kind == "ivfsq8_refine" and everything_in_ram.estimated_bytes < 4 * GIB
    tight = plan_index(500_000, 1024, IndexSettings(memory_budget_bytes=256 * 1024**2))
    assert tight.kind == "ivfpq_vault" and tight.estimated_bytes < 256 * 1024**2


def test_approximate_build_measures_recall_and_keeps_catalog_ids():
    x = unit(4000, 32)
    ids = np.arange(4000, dtype=np.int64) * 3 + 11
    index, stats = build_index(
        x, ids, IndexSettings(flat_max_vectors=0, held_out=200, target_recall=0.95)
    )
    assert stats.plan["kind"] == "ivfsq8_refine" and index.ntotal == 4000
    assert stats.queries == 200 and stats.recall_at_10 >= 0.95, stats
    _, found = index.search(x[:5], 1)
    assert found[:, 0].tolist() == ids[:5].tolist()  # a stored vector finds itself, by catalog id
    flat, flat_stats = build_index(x, ids)
    assert flat_stats.plan["kind"] == "flat" and flat_stats.recall_at_10 == 1.0


def test_each_query_probes_the_lists_its_neighbourhood_spans():
    """Per-query probing (indexes re-ranked from the vault): a query in a small, well-separated
    cluster probes a list or two; one in a dense cluster probes the many lists the cluster was
    split into, and finds its neighbours there, which the small clusters' nprobe given to every
    query could not."""
    from luna_core.index.faiss_index import recall_at, searcher_for, set_search_params
    from luna_core.index.reranked import RerankedIndex, memory_fetch

    rng = np.random.default_rng(3)
    d = 64

    def around(centers: np.ndarray, n_each: int) -> np.ndarray:
        points = np.repeat(centers, n_each, axis=0) + 0.15 * rng.normal(
            size=(len(centers) * n_each, d)
        )
        return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)

    dense_center = rng.normal(size=(1, d))
    x = np.concatenate([around(dense_center, 3000), around(rng.normal(size=(60, d)), 40)])
    ids = np.arange(len(x), dtype=np.int64) * 5 + 1
    settings = IndexSettings(
        flat_max_vectors=0, rerank_in_ram_max_bytes=0, held_out=300, target_recall=0.95
    )
    index, stats = build_index(x, ids, settings, fetch=memory_fetch(x, ids))
    params = stats.search
    assert (
        stats.plan["kind"] == "ivfsq8_vault"
        and params["probe_margin"] in settings.probe_margin_choices
    )
    assert stats.recall_at_10 >= 0.95, stats
    searcher = searcher_for(
        index, {"plan": stats.plan, "search_params": params}, memory_fetch(x, ids)
    )
    ivf = searcher.ivf
    sparse_lists = [len(searcher.lists_for(q)[0]) for q in x[3000::400]]
    dense_lists = [len(searcher.lists_for(q)[0]) for q in x[:3000:500]]
    assert max(sparse_lists) <= 2, sparse_lists
    assert min(dense_lists) >= 10 * max(sparse_lists), dense_lists
    # New points of the dense cluster find their neighbours through the lists they probe.
    queries = around(dense_center, 50)
    truth = ids[exact_neighbors(x, queries, 10)]
    adaptive = recall_at(searcher.search(queries, 10)[1], truth)
    assert adaptive >= 0.9  # measured 0.94
    narrow = RerankedIndex(index, memory_fetch(x, ids), params["k_factor"])
    set_search_params(narrow, max(sparse_lists), params["k_factor"])
    assert recall_at(narrow.search(queries, 10)[1], truth) < 0.5  # measured 0.17
    # Searching passes its lists per call: the shared index keeps its settings. Probing every list
    # finds what the chosen lists held: what the margin left out held none of these neighbours.
    set_search_params(
        searcher, None, params["k_factor"], params["probe_margin"], params["max_probes"]
    )
    searcher.search(queries[:3], 10)
    assert ivf.nprobe == params["max_probes"] < ivf.nlist
    with probing_every_list(searcher):
        assert ivf.nprobe == ivf.nlist
        assert abs(recall_at(searcher.search(queries, 10)[1], truth) - adaptive) <= 0.01


def test_a_query_on_a_centroid_still_probes_its_list():
    """Rounding put the squared distance to the nearest centroid a hair below zero for a query
    sitting on it: the margin kept no list and FAISS refused the search (seen on the tiny home,
    one image a list)."""
    from luna_core.index.faiss_index import searcher_for
    from luna_core.index.reranked import memory_fetch

    x = unit(4000, 32, seed=1)
    ids = np.arange(4000, dtype=np.int64)
    settings = IndexSettings(
        flat_max_vectors=0, rerank_in_ram_max_bytes=0, held_out=200, target_recall=0.9
    )
    index, stats = build_index(x, ids, settings, fetch=memory_fetch(x, ids))
    params = {**stats.search, "probe_margin": 0.25, "max_probes": 8}
    searcher = searcher_for(
        index, {"plan": stats.plan, "search_params": params}, memory_fetch(x, ids)
    )
    ivf = searcher.ivf
    centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
    assert all(len(searcher.lists_for(c)[0]) >= 1 for c in centroids)
    _, found = searcher.search(centroids, 5)
    assert (found >= 0).all()


def test_versions_swap_atomically_and_old_ones_are_collected(tmp_path: Path):
    import faiss
    import pyarrow as pa

    store = IndexStore(tmp_path / "idx")
    lookup = pa.table({"image_id": pa.array([1], pa.int64())})
    for i in range(5):
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(4))
        index.add_with_ids(np.eye(4, dtype=np.float32)[:1], np.array([1]))
        version = store.publish(index, lookup, {"n": i})
    assert store.current().number == 5 and version.meta()["n"] == 4
    assert sorted(p.name for p in (tmp_path / "idx" / "versions").iterdir()) == [
        "v000003",
        "v000004",
        "v000005",
    ]


def test_index_follows_the_library_incrementally(indexed_home, sample_library):
    profile = resolve_profile("tiny", indexed_home.models_dir)
    again = update_index(indexed_home, profile)
    assert again.action == "unchanged"

    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.samples.pictures import PromptSpec, draw_picture
    from luna_core.samples.writers.registry import Generation, write_a1111_png
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    spec = PromptSpec("boat", "yellow", "desert", "new style", "")
    data, _ = write_a1111_png(draw_picture(spec, 9, (96, 96)), Generation(spec=spec, seed=9))
    (sample_library.root / "new.png").write_bytes(data)
    ingest(
        indexed_home.catalog_path,
        [str(sample_library.root)],
        IngestOptions(workers=1, progress=False),
    )
    embed_images(indexed_home, profile, EmbedOptions(progress=False))
    embed_prompts(indexed_home, profile, EmbedOptions(progress=False))
    build_library(indexed_home, profile)
    added = update_index(indexed_home, profile)
    assert (added.action, added.added) == ("added", 1)
    assert added.vectors == again.vectors + 1
    rebuilt = update_index(indexed_home, profile, rebuild=True)
    assert (
        rebuilt.action == "built"
        and rebuilt.vectors == added.vectors
        and rebuilt.version == added.version + 1
    )


def test_ids_and_splits_never_change(indexed_home):
    before = dict(
        duckdb.connect(str(indexed_home.catalog_path), read_only=True)
        .execute("SELECT content_hash, image_id || split FROM library")
        .fetchall()
    )
    profile = resolve_profile("tiny", indexed_home.models_dir)
    build_library(indexed_home, profile)
    with duckdb.connect(str(indexed_home.catalog_path), read_only=True) as con:
        after = dict(con.execute("SELECT content_hash, image_id || split FROM library").fetchall())
        splits = dict(con.execute("SELECT split, count(*) FROM splits GROUP BY 1").fetchall())
    assert before == after
    assert set(splits) <= {"train", "val", "test"} and splits["train"] > splits.get("test", 0)


def test_search_finds_the_image_itself_first(indexed_home, sample_library):
    profile = resolve_profile("tiny", indexed_home.models_dir)
    vault = VaultQuery(indexed_home, profile)
    target = sample_library.images[4].path
    neighbors = vault.search(target, k=3)
    assert neighbors[0].similarity > 0.9999
    (same_bytes,) = {n.content_hash for n in neighbors[:1]}
    import hashlib

    assert same_bytes == hashlib.sha256(target.read_bytes()).hexdigest()
    assert abs(sum(n.weight for n in neighbors) - 1) < 1e-6


def test_text_search_finds_pictures_by_their_words_where_the_spaces_are_shared(
    indexed_home, capsys
):
    """On the trained tiny world the vision tower shares SDXL's pooled space: a prompt finds
    pictures of its colour and background. Elsewhere text search is refused, not computed across
    unrelated spaces."""
    from dataclasses import replace

    from luna_cli.main import main

    profile = resolve_profile("tiny", indexed_home.models_dir)
    vault = VaultQuery(indexed_home, profile)
    with duckdb.connect(str(indexed_home.catalog_path), read_only=True) as con:
        prompts = [
            p
            for (p,) in con.execute(
                "SELECT prompt FROM generations WHERE prompt LIKE 'a % on a % background%'"
            ).fetchall()
        ]
    # "a red cat on a forest background, watercolor painting, soft light"
    described = sorted(set(prompts))

    def colour_and_background(text: str | None) -> tuple[str, str]:
        words = (text or "").split(",")[0].split(" on a ")
        if len(words) != 2:  # a picture without a prompt
            return "", ""
        return words[0].split()[1], words[1].removesuffix(" background")

    found = [colour_and_background(vault.search_text(words, k=1)[0].prompt) for words in described]
    wanted = [colour_and_background(words) for words in described]
    colours = sum(f[0] == w[0] for f, w in zip(found, wanted))
    both = sum(f == w for f, w in zip(found, wanted))
    # Far above chance (a colour 1 in 10, colour and background about 1 in 60), with room for the
    # spread: on six sample libraries (seeds 1-5, 7) the colour was found for 78-92 % of prompts
    # and both for 70-92 %; an AMD machine found 19 of 24 colours where this one finds 21. The
    # exact figure is a benchmark's (benchmarks/bench_tiny.py), not a test's.
    assert colours >= 0.6 * len(described) and both >= 0.45 * len(described), (
        colours,
        both,
        len(described),
    )

    assert (
        main(
            [
                "search",
                "--text",
                described[0],
                "--k",
                "2",
                "--json",
                "--home",
                str(indexed_home.root),
            ]
        )
        == 0
    )
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["search", "--home", str(indexed_home.root)]) == 2
    assert "an image or --text" in capsys.readouterr().err
    with pytest.raises(QueryError, match="different CLIP models"):
        VaultQuery(indexed_home, replace(profile, shared_space=False)).search_text("a red cat")


def test_an_index_past_its_ram_copy_reranks_from_the_vault_rows(indexed_home, sample_library):
    from luna_core.index.reranked import RerankedIndex

    profile = resolve_profile("tiny", indexed_home.models_dir)
    settings = IndexSettings(
        flat_max_vectors=10, rerank_in_ram_max_bytes=0, held_out=20, target_recall=0.9
    )
    report = update_index(indexed_home, profile, settings, rebuild=True)
    assert (
        report.meta["plan"]["kind"] == "ivfsq8_vault"
        and report.meta["search_params"]["rerank"] == "vault"
    )
    assert report.meta["recall_at_10"] >= 0.9
    vault = VaultQuery(indexed_home, profile)
    target = sample_library.images[4].path
    query = vault.embed(load_image(target))
    neighbors = vault.search(target, k=5)
    assert isinstance(vault.index.index, RerankedIndex)
    assert neighbors[0].similarity > 0.999  # the image itself, first
    # The similarities are exact inner products with the vault's float16 rows, not 8-bit estimates.
    lookup = vault.index.lookup
    ids = lookup.column("image_id").to_numpy()
    rows = lookup.column("vision_row").to_numpy()
    store = open_vision_store(indexed_home, profile)
    for neighbor in neighbors:
        row = rows[ids == neighbor.image_id]
        exact = float(store.read("embeds", row)[0].astype(np.float32) @ query.astype(np.float32))
        assert abs(neighbor.similarity - exact) < 1e-5
    # An incremental update keeps re-ranking from the vault.
    assert update_index(indexed_home, profile, settings).action in ("unchanged", "refreshed")


def test_conditioning_is_the_weighted_mean_of_neighbour_rows(indexed_home, sample_library):
    profile = resolve_profile("tiny", indexed_home.models_dir)
    vault = VaultQuery(indexed_home, profile)
    answer = vault.condition(sample_library.images[0].path, Box(8, 8, 64, 64), k=4)
    assert answer.prompt_embeds.shape == (1, 77, 96) and answer.pooled_prompt_embeds.shape == (
        1,
        48,
    )
    assert answer.negative_prompt_embeds.shape == (1, 77, 96)
    with duckdb.connect(str(indexed_home.catalog_path), read_only=True) as con:
        rows = dict(con.execute("SELECT image_id, prompt_row FROM library").fetchall())
    store = open_text_store(indexed_home, vault.profile)  # rows decoded by the store's codec
    expected = sum(
        n.weight * store.read("prompt_embeds", [rows[n.image_id]])[0].astype(np.float32)
        for n in answer.neighbors
    )
    # the answer sums in the codec's basis, then decodes once; the rows here are float16
    np.testing.assert_allclose(answer.prompt_embeds[0], expected, atol=2e-3)

    typed, typed_pooled = vault.encode_prompt("a red cat")
    blend0 = vault.condition(
        sample_library.images[0].path, k=4, prompt="a red cat", mode="blend", alpha=0.0
    )
    np.testing.assert_allclose(blend0.prompt_embeds[0], typed, atol=1e-6)
    concat = vault.condition(sample_library.images[0].path, k=4, prompt="a red cat", mode="concat")
    assert concat.prompt_embeds.shape == (1, 154, 96) and concat.negative_prompt_embeds.shape == (
        1,
        154,
        96,
    )
    np.testing.assert_allclose(concat.pooled_prompt_embeds[0], typed_pooled, atol=1e-6)


def test_conditioning_file_drives_the_sdxl_img2img_pipeline_unchanged(
    indexed_home, sample_library, tmp_path
):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from PIL import Image
    from safetensors.torch import load_file

    profile = resolve_profile("tiny", indexed_home.models_dir)
    out = (
        VaultQuery(indexed_home, profile)
        .condition(sample_library.images[2].path, k=3)
        .save(tmp_path / "c.safetensors")
    )
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        profile.sdxl_model, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None
    )
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        image=Image.open(sample_library.images[2].path).convert("RGB").resize((64, 64)),
        strength=0.5,
        num_inference_steps=4,
        generator=torch.Generator().manual_seed(0),
        **load_file(str(out)),
    )
    image = result.images[0]
    assert image.size == (64, 64) and np.asarray(image).std() > 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.png", "cannot read"),
        (
            lambda p: (p / "notes.png").write_text("not an image") and p / "notes.png",
            "not an image",
        ),
    ],
)
def test_bad_query_files(indexed_home, tmp_path, make, message):
    from luna_core.images import PictureError

    vault = VaultQuery(indexed_home, resolve_profile("tiny", indexed_home.models_dir))
    with pytest.raises(PictureError, match=message):
        vault.search(make(tmp_path))


@pytest.mark.parametrize(
    "box, k, message",
    [
        ("0,0,0,10", 3, "empty"),
        ("90,90,20,20", 3, "outside"),
        ("-1,0,5,5", 3, "outside"),
        ("a,b", 3, "X,Y,W,H"),
        (None, 0, "at least 1"),
        (None, 10_000, "larger than the library"),
    ],
)
def test_bad_boxes_and_k(indexed_home, sample_library, box, k, message):
    vault = VaultQuery(indexed_home, resolve_profile("tiny", indexed_home.models_dir))
    with pytest.raises(QueryError, match=message):
        vault.search(sample_library.images[0].path, Box.parse(box) if box else None, k=k)


def test_missing_corrupted_and_foreign_indexes_are_refused(indexed_home, sample_library):
    from luna_core.errors import CorruptStoreError, NotBuiltError

    profile = resolve_profile("tiny", indexed_home.models_dir)
    image = sample_library.images[0].path
    store = IndexStore(indexed_home.index_dir(profile))
    version = store.current()
    meta = json.loads(version.meta_file.read_text())
    version.meta_file.write_text(json.dumps({**meta, "vision_key": "someone-else@main"}))
    with pytest.raises(QueryError, match="built with vision model someone-else"):
        VaultQuery(indexed_home, profile).search(image)
    version.meta_file.write_text(json.dumps(meta))
    version.index_file.write_bytes(version.index_file.read_bytes()[:100])
    with pytest.raises(CorruptStoreError, match="corrupted"):
        VaultQuery(indexed_home, profile).search(image)
    shutil.rmtree(store.root)
    with pytest.raises(NotBuiltError, match="no index"):
        VaultQuery(indexed_home, profile).search(image)


def test_queries_work_while_the_catalog_is_held_and_the_index_rebuilt(indexed_home, sample_library):
    """Another process holds the catalog (as a materialization does) and the index is rebuilt
    meanwhile: queries from a third process never wait and never fail. The holder keeps the
    catalog until it is told to let go, however long the queries take on a loaded machine."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys
        from luna_core.catalog.connection import open_catalog
        with open_catalog({str(indexed_home.catalog_path)!r}) as con:
            print("held", flush=True)
            sys.stdin.readline()  # until the test says release
        print("released", flush=True)
    """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        querier = subprocess.run(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
            from luna_core.models.profiles import resolve_profile
            from luna_core.home.home import LunaHome
            from luna_core.ask.vault_query import VaultQuery
            home = LunaHome.resolve({str(indexed_home.root)!r})
            profile = resolve_profile("tiny", home.models_dir)
            for _ in range(5):
                image = {str(sample_library.images[0].path)!r}
                answer = VaultQuery(home, profile).condition(image, k=3)
                assert answer.prompt_embeds.shape == (1, 77, 96)
            print("ok")
        """),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert querier.returncode == 0, querier.stderr[-2000:]
        assert holder.poll() is None, "the holder still holds the catalog while the queries ran"
    finally:
        holder.communicate("release\n", timeout=60)
    assert holder.returncode == 0

    profile = resolve_profile("tiny", indexed_home.models_dir)
    errors: list[Exception] = []
    stop = threading.Event()

    def keep_querying():
        while not stop.is_set():
            try:
                VaultQuery(indexed_home, profile).search(sample_library.images[1].path, k=2)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    thread = threading.Thread(target=keep_querying)
    thread.start()
    for _ in range(4):
        update_index(indexed_home, profile, rebuild=True)
    stop.set()
    thread.join()
    assert errors == []


def test_an_image_that_leaves_and_returns_is_indexed_once(indexed_home):
    profile = resolve_profile("tiny", indexed_home.models_dir)
    total = load_index(IndexStore(indexed_home.index_dir(profile))).index.ntotal
    with duckdb.connect(str(indexed_home.catalog_path)) as con:
        (path,) = (
            con.execute("""SELECT min(path) FROM images WHERE status = 'ok' AND content_hash IN
                                 (SELECT content_hash FROM images GROUP BY 1 HAVING count(*) =
                                     1)""").fetchone()
        )
        con.execute("UPDATE images SET status = 'missing' WHERE path = ?", [path])
    gone = update_index(indexed_home, profile)
    loaded = load_index(IndexStore(indexed_home.index_dir(profile)))
    assert (gone.action, gone.removed) == ("removed", 1), "an exact index drops the departed vector"
    assert loaded.lookup.num_rows == loaded.index.ntotal == total - 1
    with duckdb.connect(str(indexed_home.catalog_path)) as con:
        con.execute("UPDATE images SET status = 'ok' WHERE path = ?", [path])
    back = update_index(indexed_home, profile)
    assert back.added == 1 and back.vectors == total
    assert load_index(IndexStore(indexed_home.index_dir(profile))).index.ntotal == total, (
        "indexed once"
    )


def test_a_moved_file_and_prompts_encoded_later_republish_the_lookup(indexed_home, sample_library):
    """No new vectors, but what the lookup holds changed: it is republished, never left stale."""
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.vault.embed import EmbedOptions
    from luna_core.vault.embed_prompts import embed_prompts

    profile = resolve_profile("tiny", indexed_home.models_dir)
    image = sample_library.images[3].path
    moved = image.with_name("moved-" + image.name)
    image.rename(moved)
    ingest(
        indexed_home.catalog_path,
        [str(sample_library.root)],
        IngestOptions(workers=1, progress=False),
    )
    build_library(indexed_home, profile)
    report = update_index(indexed_home, profile)
    assert (report.action, report.added) == ("refreshed", 0)
    paths = set(
        load_index(IndexStore(indexed_home.index_dir(profile))).lookup.column("path").to_pylist()
    )
    assert str(moved) in paths and str(image) not in paths

    # Prompts encoded after the index was built: the published conditioning rows follow.
    with duckdb.connect(str(indexed_home.catalog_path)) as con:
        con.execute("DELETE FROM text_rows")
    build_library(indexed_home, profile)
    assert update_index(indexed_home, profile).action == "refreshed"
    lookup = load_index(IndexStore(indexed_home.index_dir(profile))).lookup
    assert set(lookup.column("prompt_row").to_pylist()) == {-1}
    embed_prompts(indexed_home, profile, EmbedOptions(progress=False))
    build_library(indexed_home, profile)
    assert update_index(indexed_home, profile).action == "refreshed"
    lookup = load_index(IndexStore(indexed_home.index_dir(profile))).lookup
    rows = [
        r
        for r, p in zip(
            lookup.column("prompt_row").to_pylist(), lookup.column("prompt").to_pylist()
        )
        if p
    ]
    assert rows and min(rows) >= 0, "every image with a prompt has its conditioning row again"
    assert update_index(indexed_home, profile).action == "unchanged"


def test_the_index_is_keyed_by_both_models(indexed_home):
    from dataclasses import replace

    profile = resolve_profile("tiny", indexed_home.models_dir)
    other_text = replace(profile, sdxl_id="another-sdxl")
    assert indexed_home.index_dir(other_text) != indexed_home.index_dir(profile)
    assert profile.vision_key in indexed_home.index_dir(profile).name
    assert profile.text_key in indexed_home.index_dir(profile).name


def test_a_query_that_loses_many_neighbours_searches_deeper(indexed_home, sample_library):
    """Images gone since the build stay in an IVF index (it cannot remove; here the rebuild
    threshold is never reached); a query still gets k images of the library."""
    from luna_core.index.faiss_index import IndexSettings

    profile = resolve_profile("tiny", indexed_home.models_dir)
    ivf = IndexSettings(flat_max_vectors=2, held_out=8, max_retired_share=1.0)
    assert update_index(indexed_home, profile, ivf).meta["plan"]["kind"] != "flat"
    with duckdb.connect(str(indexed_home.catalog_path)) as con:
        kept = [
            p
            for (p,) in con.execute(
                "SELECT min(path) FROM images WHERE status = 'ok' GROUP BY content_hash ORDER BY "
                "1 LIMIT 3"
            ).fetchall()
        ]
        con.execute(
            "UPDATE images SET status = 'missing' WHERE path NOT IN (SELECT unnest(?))", [kept]
        )
    build_library(indexed_home, profile)
    report = update_index(indexed_home, profile, ivf)
    assert report.action == "refreshed" and report.meta["retired_vectors"] > 20, (
        "gone images are still in the index"
    )
    found = VaultQuery(indexed_home, profile).search(sample_library.images[0].path, k=3)
    assert sorted(n.path for n in found) == sorted(kept)
    with pytest.raises(QueryError, match="larger than the library"):
        VaultQuery(indexed_home, profile).search(sample_library.images[0].path, k=4)


def test_a_damaged_index_is_never_served_and_the_next_build_replaces_it(
    indexed_home, sample_library
):
    """A few garbage bytes inside index.faiss (same size, so only a checksum can tell): queries
    answer from the previous good version or refuse, never from the damaged one; the next build
    rebuilds."""
    from luna_core.errors import CorruptStoreError

    profile = resolve_profile("tiny", indexed_home.models_dir)
    store = IndexStore(indexed_home.index_dir(profile))
    first = store.current()
    expected = [
        n.path for n in VaultQuery(indexed_home, profile).search(sample_library.images[0].path, k=3)
    ]

    def damage(version) -> None:
        data = bytearray(version.index_file.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
        version.index_file.write_bytes(bytes(data))

    damage(first)
    with pytest.raises(CorruptStoreError, match="corrupted"):
        VaultQuery(indexed_home, profile).search(sample_library.images[0].path, k=3)
    rebuilt = update_index(indexed_home, profile)
    assert rebuilt.action == "built" and "damaged" in rebuilt.reason
    assert [
        n.path for n in VaultQuery(indexed_home, profile).search(sample_library.images[0].path, k=3)
    ] == expected

    with duckdb.connect(
        str(indexed_home.catalog_path)
    ) as con:  # a lookup change publishes one more version
        con.execute('DELETE FROM text_rows WHERE "row" = 0')
    build_library(indexed_home, profile)
    assert update_index(indexed_home, profile).action == "refreshed"
    damage(store.current())
    vault = VaultQuery(indexed_home, profile)
    assert [n.path for n in vault.search(sample_library.images[0].path, k=3)] == expected
    assert vault.index.fell_back_from == store.current().number, (
        "served by the previous good version"
    )


def test_a_copied_home_answers_from_its_own_files(projector_home, sample_library, tmp_path):
    """Build, copy the home, damage the original: the copy still answers (vault and projector) from
    its own stores, index and checkpoints; nothing inside it points back at the original."""
    from luna_core.home.home import LunaHome

    profile = resolve_profile("tiny", projector_home.models_dir)
    image = sample_library.images[0].path
    expected = VaultQuery(projector_home, profile).condition(image, k=3).prompt_embeds
    copy = LunaHome.resolve(tmp_path / "copy")
    shutil.copytree(projector_home.root, copy.root, symlinks=True)
    shutil.rmtree(projector_home.vault_dir)
    shutil.rmtree(projector_home.index_root)
    shutil.rmtree(projector_home.mlflow_dir / "artifacts")
    vault = VaultQuery(copy, profile)
    np.testing.assert_array_equal(vault.condition(image, k=3).prompt_embeds, expected)
    answer = vault.condition_with_projector(image, "models:/luna-projector@champion")
    assert answer.prompt_embeds.shape == (1, 77, 96)
    with duckdb.connect(str(copy.catalog_path), read_only=True) as con:
        paths = [p for (p,) in con.execute("SELECT path FROM vault_stores").fetchall()]
    assert paths and not any(p.startswith("/") for p in paths), (
        "store paths are relative to the home"
    )
    meta = load_index(IndexStore(copy.index_dir(profile))).meta
    assert not meta["text_store"].startswith("/"), (
        "the index names its text store relative to the home"
    )
