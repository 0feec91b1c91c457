"""Refinement with true batching: item i in a batch equals item i alone, every item keeps its own
conditioning, micro-conditioning and IP-Adapter embedding, and both modes work with every source."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch

from luna_core.ask.boxes import Box, BoxError, load_boxes
from luna_core.errors import NotBuiltError
from luna_core.models.profiles import resolve_profile, tiny_profile
from luna_core.refine.geometry import RefineInputError, chess_tiles, detail_crops, feather_mask
from luna_core.refine.options import RefineSettings, SamplerSettings, SourceSettings
from luna_core.refine.refine_report import save_image
from luna_core.refine.refiner import Refiner
from luna_core.refine.sampler import ItemConditioning, SDXLSampler
from tests.refine_items import random_items

# Eight steps, as a real run takes (the final step scales the UNet's float rounding by its sigma:
# with one or two steps at high noise, batched and single kernels differ by ~1e-5; at 8 steps by
# ~4e-6).
FAST = SamplerSettings(strength=0.5, steps=8, guidance_scale=4.0, seed=7)
TOLERANCE = 1e-5  # CPU fp32: batched kernels round differently, by a few 1e-6 at most


# ---------------------------------------------------------------- geometry


def test_chess_grid_of_a_4k_image_is_1024_tiles_13_even_then_12_odd():
    tiles = chess_tiles(4096, 4096, 5)
    assert {(t.rect.width, t.rect.height) for t in tiles} == {(1024, 1024)}
    assert [sum(t.parity == p for t in tiles) for p in (0, 1)] == [13, 12]
    covered = np.zeros((4096, 4096), bool)
    for t in tiles:
        covered[t.rect.y : t.rect.y + t.rect.height, t.rect.x : t.rect.x + t.rect.width] = True
    assert covered.all()
    small = chess_tiles(1024, 768, 5)
    assert (small[0].rect.width, small[0].rect.height) == (256, 192), (
        "proportionally smaller, multiples of 8"
    )


def test_bad_grids_boxes_and_sizes_are_refused(tmp_path: Path):
    with pytest.raises(RefineInputError, match="grid must be at least 1"):
        chess_tiles(256, 256, 0)
    with pytest.raises(RefineInputError, match="smaller than one"):
        chess_tiles(6, 6, 1)
    for box, message in (
        ("0,0,0,10", "empty"),
        ("-5,0,10,10", "outside"),
        ("250,250,20,20", "outside"),
        ("1,2,3", "X,Y,W,H"),
    ):
        with pytest.raises(BoxError, match=message):
            detail_crops(256, 256, [Box.parse(box)])
    (tmp_path / "boxes.json").write_text(
        json.dumps([[1, 2, 30, 40], "5,6,7,8", {"x": 1, "y": 1, "w": 9, "h": 9}])
    )
    assert load_boxes(tmp_path / "boxes.json") == [
        Box(1, 2, 30, 40),
        Box(5, 6, 7, 8),
        Box(1, 1, 9, 9),
    ]
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BoxError, match="cannot be read"):
        load_boxes(tmp_path / "bad.json")


def test_detail_crops_hold_their_box_and_feather_only_the_margin():
    crops = detail_crops(256, 256, [Box(100, 100, 40, 40), Box(0, 0, 30, 20)], margin=0.25)
    assert crops[0].rect == Box(90, 90, 60, 60) and crops[1].rect.x == 0 and crops[1].rect.y == 0
    mask = feather_mask(60, 60, (10, 10, 10, 10))
    assert mask[10:50, 10:50].min() == 1.0 and mask[0, 0] < 0.1
    assert feather_mask(8, 8, (0, 0, 0, 0)).min() == 1.0


# ---------------------------------------------------------------- the batched sampler


@pytest.fixture(scope="module")
def sampler(tiny_models):
    profile = tiny_profile(tiny_models)
    return SDXLSampler(profile.sdxl_model, None, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def ip_sampler(tiny_models):
    from luna_core.models.tiny import ensure_tiny_ip_adapter

    profile = tiny_profile(tiny_models)
    sampler = SDXLSampler(profile.sdxl_model, None, torch.device("cpu"), torch.float32)
    sampler.load_ip_adapter(ensure_tiny_ip_adapter(tiny_models), 0.5)
    return sampler


def _items(n: int, seed: int = 0):
    return random_items(n, seed, FAST.seed)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.parametrize("with_ip", [False, True])
def test_an_item_refined_in_a_batch_equals_the_item_refined_alone(sampler, ip_sampler, with_ip):
    use = ip_sampler if with_ip else sampler
    images, conditions, time_ids, seeds, ip = _items(5)
    ip = ip if with_ip else None
    batched = use.refine(images, conditions, time_ids, seeds, FAST, ip)
    chunked = use.refine(
        images,
        conditions,
        time_ids,
        seeds,
        SamplerSettings(**{**FAST.__dict__, "batch_size": 2}),
        ip,
    )
    for i in range(5):
        alone = use.refine(
            images[i : i + 1],
            conditions[i : i + 1],
            time_ids[i : i + 1],
            seeds[i : i + 1],
            FAST,
            None if ip is None else ip[i : i + 1],
        )[0]
        assert _max_diff(batched[i], alone) <= TOLERANCE
        assert _max_diff(chunked[i], alone) <= TOLERANCE


def test_each_item_sees_only_its_own_conditioning_micro_conditioning_and_ip_embedding(ip_sampler):
    """Change one item's text conditioning, time_ids or IP-Adapter embedding: that item alone
    changes (diffusers issue 9813 mixes IP-Adapter images across items; here they never mix)."""
    images, conditions, time_ids, seeds, ip = _items(4, seed=1)
    base = ip_sampler.refine(images, conditions, time_ids, seeds, FAST, ip)
    changed_text = list(conditions)
    changed_text[2] = ItemConditioning(
        conditions[2].prompt_embeds * -1,
        conditions[2].pooled_prompt_embeds * -1,
        conditions[2].negative_prompt_embeds,
        conditions[2].negative_pooled_prompt_embeds,
    )
    changed_times = time_ids.copy()
    changed_times[2] = [1024, 1024, 512, 512, 32, 32]
    changed_ip = ip.copy()
    changed_ip[2] = -changed_ip[2] * 5
    for variant in (
        (changed_text, time_ids, ip),
        (conditions, changed_times, ip),
        (conditions, time_ids, changed_ip),
    ):
        out = ip_sampler.refine(images, variant[0], variant[1], seeds, FAST, variant[2])
        assert _max_diff(out[2], base[2]) > 1e-3, "the changed item follows its own inputs"
        for i in (0, 1, 3):
            assert _max_diff(out[i], base[i]) <= TOLERANCE, "the other items do not see them"


# ---------------------------------------------------------------- both modes, every source


@pytest.mark.parametrize("source", ["vault", "projector", "prompt", "blend"])
def test_chess_and_detailer_with_every_source(projector_home, sample_library, source, tmp_path):
    profile = resolve_profile("tiny", projector_home.models_dir)
    from luna_core.images import read_picture

    image = read_picture(sample_library.images[0].path)
    prompt = "a red cat in a forest" if source in ("prompt", "blend") else None
    refiner = Refiner(projector_home, profile, SourceSettings(source, prompt=prompt, k=3))
    settings = RefineSettings(sampler=FAST)
    refined, report = refiner.chess(image, settings)
    assert refined.size == image.size
    assert [(p.name, p.items, p.sampler_calls) for p in report.passes] == [
        ("even", 13, 1),
        ("odd", 12, 1),
    ]
    assert np.asarray(refined).astype(int).std() > 0 and np.any(
        np.asarray(refined) != np.asarray(image.convert("RGB"))
    )
    detailed, report = refiner.detail(
        image, [Box(10, 10, 30, 30), Box(50, 40, 40, 40), Box(0, 60, 20, 20)], settings
    )
    assert detailed.size == image.size and [(p.items, p.sampler_calls) for p in report.passes] == [
        (3, 1)
    ]
    untouched = np.asarray(detailed)[
        92:, 92:
    ]  # far from every box: the detailer leaves it as it was
    np.testing.assert_array_equal(untouched, np.asarray(image.convert("RGB"))[92:, 92:])
    out = save_image(detailed, tmp_path / "d.png", report)
    assert (
        json.loads(__import__("PIL.Image").Image.open(out).text["luna_refine"])["sampler_calls"]
        == 1
    )


def test_sequential_refinement_gives_the_same_image_as_batched(indexed_home, sample_library):
    from luna_core.images import read_picture

    profile = resolve_profile("tiny", indexed_home.models_dir)
    image = read_picture(sample_library.images[1].path)
    refiner = Refiner(indexed_home, profile, SourceSettings("vault", k=2))
    batched, one_call = refiner.chess(image, RefineSettings(grid=3, sampler=FAST))
    alone, many_calls = refiner.chess(image, RefineSettings(grid=3, sampler=FAST, sequential=True))
    assert one_call.sampler_calls == 2 and many_calls.sampler_calls == 9
    assert _max_diff(np.asarray(batched, float), np.asarray(alone, float)) <= 1, (
        "equal up to rounding to 8 bits"
    )


@pytest.mark.parametrize("mode", ["chess", "detail"])
def test_in_float64_an_item_batched_is_exactly_the_item_alone(indexed_home, sample_library, mode):
    """The sampler is exact: in float64, one call for all items, one call per item and calls of two
    give the same image, bit for bit (in float32 batched kernels round differently: the test
    above bounds it)."""
    from dataclasses import replace

    from luna_core.images import read_picture

    profile = resolve_profile("tiny", indexed_home.models_dir)
    image = read_picture(sample_library.images[1].path)
    refiner = Refiner(indexed_home, profile, SourceSettings("vault", k=2), dtype="float64")
    w, h = image.size
    boxes = [
        Box(0, 0, w // 3, h // 3),
        Box(w // 2, h // 4, w // 3, h // 3),
        Box(w // 4, h // 2, w // 3, h // 3),
    ]
    images, calls = [], []
    for extra in ({}, {"sequential": True}, {"sampler": replace(FAST, batch_size=2)}):
        settings = RefineSettings(**{"grid": 3, "sampler": FAST, **extra})
        refined, report = (
            refiner.chess(image, settings)
            if mode == "chess"
            else refiner.detail(image, boxes, settings)
        )
        images.append(np.asarray(refined))
        calls.append(report.sampler_calls)
    assert len(set(calls)) == 3, calls
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    assert not np.array_equal(images[0], np.asarray(image.convert("RGB"))), "the image was refined"


def test_missing_index_or_projector_is_reported_before_any_work(projector_home):
    import shutil

    profile = resolve_profile("tiny", projector_home.models_dir)
    with pytest.raises(NotBuiltError, match="no projector luna-projector-nope"):
        Refiner(
            projector_home,
            profile,
            SourceSettings("projector", projector="models:/luna-projector-nope@champion"),
        )
    shutil.rmtree(projector_home.index_root)
    with pytest.raises(NotBuiltError, match="no index"):
        Refiner(projector_home, profile, SourceSettings("vault"))


@pytest.mark.parametrize("mode", ["chess", "detail"])
def test_luna_refine_batched_sequential_and_batch_sizes_agree_within_two_levels(
    indexed_home, sample_library, tmp_path, mode
):
    """Issue 29, as a user checks it: `luna refine` on a demo-sized picture, batched,
    `--sequential`, and `--batch-size` 1 and 2, in float32 on the trained tiny world, gives
    images within 2/255 of each other (random weights amplified float32 rounding to 14/255)."""
    from PIL import Image

    from luna_cli.main import main

    picture = tmp_path / "picture.png"
    Image.open(sample_library.images[2].path).convert("RGB").resize((256, 256)).save(picture)
    where = (
        ["--box", "20,30,90,90", "--box", "140,120,100,100", "--box", "60,150,70,70"]
        if mode == "detail"
        else ["--grid", "3"]
    )
    common = [str(picture), *where, "--seed", "1", "--steps", "4", "--home", str(indexed_home.root)]
    outputs = {}
    for name, extra in (
        ("batched", []),
        ("sequential", ["--sequential"]),
        ("batch 1", ["--batch-size", "1"]),
        ("batch 2", ["--batch-size", "2"]),
    ):
        out = tmp_path / f"{name.replace(' ', '_')}.png"
        assert main(["refine", *common, "--out", str(out), *extra]) == 0
        outputs[name] = np.asarray(Image.open(out).convert("RGB"), dtype=int)
    assert np.abs(outputs["batched"] - np.asarray(Image.open(picture), dtype=int)).max() > 2, (
        "the picture was refined"
    )
    for name in ("sequential", "batch 1", "batch 2"):
        assert np.abs(outputs["batched"] - outputs[name]).max() <= 2, name


def test_cli_refines_in_both_modes_and_writes_nothing_on_failure(
    projector_home, sample_library, tmp_path, capsys
):
    from luna_cli.main import main

    image = str(sample_library.images[0].path)
    home = ["--home", str(projector_home.root), "--steps", "2"]
    assert main(["refine", image, "--out", str(tmp_path / "chess.png"), "--grid", "3", *home]) == 0
    assert "even: 5 items in 1 UNet call(s)" in capsys.readouterr().out
    (tmp_path / "boxes.json").write_text(json.dumps([[10, 10, 30, 30], [40, 40, 30, 30]]))
    assert (
        main(
            [
                "refine",
                image,
                "--out",
                str(tmp_path / "detail.webp"),
                "--boxes",
                str(tmp_path / "boxes.json"),
                "--source",
                "projector",
                *home,
            ]
        )
        == 0
    )
    assert "crops: 2 items in 1 UNet call(s)" in capsys.readouterr().out
    assert (
        main(["refine", image, "--out", str(tmp_path / "x.png"), "--box", "90,90,50,50", *home])
        == 2
    )
    assert "outside" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(["refine", image, "--out", str(tmp_path / "y.png"), "--grid", "0", *home]) == 2
    assert (
        main(["refine", image, "--out", str(tmp_path / "z.png"), "--source", "prompt", *home]) == 2
    )
    assert "--prompt" in capsys.readouterr().err
    assert not list(tmp_path.glob("[xyz].png")) and not list(tmp_path.glob(".*tmp*"))


def test_refine_job_from_the_launchpad_writes_outputs_and_thumbnails(indexed_home, sample_library):
    from luna_assets.definitions import build_definitions

    job = build_definitions(str(indexed_home.root)).resolve_job_def("refine_images")
    good = str(sample_library.images[0].path)
    config = {"ops": {"refine": {"config": {"images": [good], "grid": 3, "steps": 2}}}}
    result = job.execute_in_process(run_config=config, instance=dg.DagsterInstance.ephemeral())
    assert result.success
    outputs = result.output_for_node("refine")
    assert (
        len(outputs) == 1
        and Path(outputs[0]).parent == indexed_home.refined_dir
        and Path(outputs[0]).exists()
    )
    bad = {
        "ops": {
            "refine": {
                "config": {"images": [good, "/no/such.png"], "boxes": ["10,10,30,30"], "steps": 2}
            }
        }
    }
    failed = job.execute_in_process(
        run_config=bad, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert not failed.success
    failure = next(e for e in failed.all_events if e.is_step_failure).step_failure_data
    assert "/no/such.png" in failure.error.message
    assert failure.user_failure_data.metadata["refined"].value == 1, (
        "the good image was still refined"
    )
    assert "data:image/png;base64," in failure.user_failure_data.metadata["before / after"].value
    by_query = {
        "ops": {
            "refine": {
                "config": {"where": "generator = 'ComfyUI'", "limit": 2, "grid": 2, "steps": 2}
            }
        }
    }
    chosen = job.execute_in_process(run_config=by_query, instance=dg.DagsterInstance.ephemeral())
    assert len(chosen.output_for_node("refine")) == 2
    # YOLO writes one .txt per image: `{stem}` picks each one's
    labels = indexed_home.root / "labels"
    labels.mkdir()
    (labels / f"{Path(good).stem}.txt").write_text("0 0.5 0.5 0.4 0.4\n")
    detected = {
        "ops": {
            "refine": {
                "config": {"images": [good], "detections": str(labels / "{stem}.txt"), "steps": 2}
            }
        }
    }
    result = job.execute_in_process(run_config=detected, instance=dg.DagsterInstance.ephemeral())
    assert result.success and result.output_for_node("refine")[0].endswith(
        ".detail." + result.run_id[:8] + ".png"
    )


def test_each_refinement_times_itself_when_one_refiner_serves_two_threads(
    indexed_home, sample_library, monkeypatch
):
    """A refinement's seconds run from its own start: a second call started meanwhile (another
    thread) does not move it. A clock the test sets keeps this exact."""
    import threading

    import luna_core.refine.refiner as refiner_module
    from luna_core.images import read_picture

    profile = resolve_profile("tiny", indexed_home.models_dir)
    image = read_picture(sample_library.images[1].path)
    refiner = Refiner(indexed_home, profile, SourceSettings("vault", k=2))
    clock = {"now": 0.0}
    monkeypatch.setattr(refiner_module.time, "perf_counter", lambda: clock["now"])
    inside, release = threading.Event(), threading.Event()
    conditioner = refiner.conditioner

    class Held:
        def condition(self, crops, *args, **kwargs):
            if threading.current_thread().name == "first" and not inside.is_set():
                inside.set()
                assert release.wait(120)
            return conditioner.condition(crops, *args, **kwargs)

    refiner.conditioner = Held()
    reports = {}
    first = threading.Thread(
        name="first",
        target=lambda: reports.setdefault(
            "first", refiner.chess(image, RefineSettings(grid=3, sampler=FAST))[1]
        ),
    )
    first.start()
    assert inside.wait(120)
    clock["now"] = 100.0  # the second call starts at 100
    reports["second"] = refiner.chess(image, RefineSettings(grid=3, sampler=FAST))[1]
    clock["now"] = 250.0
    release.set()
    first.join(120)
    # the old shared start: 150
    assert reports["first"].seconds == 250.0 and reports["second"].seconds == 0.0


def test_items_of_different_chunk_counts_batch_as_they_refine_alone(sampler):
    """A two-chunk conditioning beside a one-chunk one: the batch meets at 154 tokens by repetition
    (the rule ComfyUI uses), and each item still refines as it does alone."""
    images, conditions, time_ids, seeds, _ = _items(3, seed=4)
    rng = np.random.default_rng(9)
    long_item = ItemConditioning(
        rng.normal(size=(154, 96)).astype(np.float32),
        conditions[1].pooled_prompt_embeds,
        rng.normal(size=(154, 96)).astype(np.float32),
        conditions[1].negative_pooled_prompt_embeds,
    )
    conditions[1] = long_item
    batched = sampler.refine(images, conditions, time_ids, seeds, FAST)
    for i in range(3):
        alone = sampler.refine(
            images[i : i + 1], conditions[i : i + 1], time_ids[i : i + 1], seeds[i : i + 1], FAST
        )[0]
        assert _max_diff(batched[i], alone) <= 1e-4, i
