"""The trained tiny world: its cache (one training per machine, keyed by the recipe, locked,
atomic), old homes' upgrade, and that the cached models learned the generator's world."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from luna_core.models import tiny, tiny_world
from luna_core.samples.pictures import COLOURS, PromptSpec, draw_picture, random_prompt

# A recipe small enough to train in seconds: the cache's rules, not the models' quality, are under
# test.
SMALL = {
    "clip": {"pictures": 64, "steps": 2},
    "vae": {"pictures": 16, "steps": 2},
    "unet": {"pictures": 32, "steps": 2},
}
TRAIN_SMALL = """
import json, sys
from luna_core.models import tiny, tiny_world
for part, changes in json.loads(sys.argv[1]).items():
    tiny_world.RECIPE[part].update(changes)
trained = []
original = tiny._train
tiny._train = lambda *a: (trained.append(1), original(*a))
root = tiny.ensure_tiny_models(progress=False)
print(json.dumps({"root": str(root), "trained": len(trained)}))
"""


@pytest.fixture
def small_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("LUNA_TINY_CACHE", str(tmp_path / "cache"))
    recipe = json.loads(json.dumps(tiny_world.RECIPE))
    for part, changes in SMALL.items():
        recipe[part].update(changes)
    monkeypatch.setattr(tiny_world, "RECIPE", recipe)
    return tmp_path / "cache"


def test_the_cache_is_keyed_by_the_recipe_and_holds_a_loadable_world(small_recipe, monkeypatch):
    from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
    from luna_core.models.profiles import tiny_profile

    root = tiny.ensure_tiny_models(progress=False)
    assert root == small_recipe / tiny_world.recipe_hash() and root.parent == small_recipe
    built = json.loads((root / "complete.json").read_text())
    assert built["recipe"] == tiny_world.RECIPE and set(built["seconds"]) == {"clip", "vae", "unet"}
    assert [p.name for p in small_recipe.iterdir() if not p.name.startswith(".build")] == [
        root.name
    ], "no staging left"
    profile = tiny_profile(root)
    vision = VisionEncoder(profile.vision_model, None, "cpu", __import__("torch").float32)
    text = SDXLTextEncoder(profile.sdxl_model, None, "cpu", __import__("torch").float32)
    assert vision.width == text.pooled_width == 48, (
        "image and text embeddings share the pooled space"
    )
    assert (root / "ip-adapter" / tiny.IP_ADAPTER_WEIGHTS).exists()

    stamp = (root / "complete.json").stat().st_mtime_ns
    assert (
        tiny.ensure_tiny_models(progress=False) == root
        and (root / "complete.json").stat().st_mtime_ns == stamp
    )
    changed = json.loads(json.dumps(tiny_world.RECIPE))
    changed["unet"]["lr"] *= 2
    assert tiny_world.recipe_hash(changed) != tiny_world.recipe_hash(), (
        "another recipe is another folder"
    )


def test_two_processes_asking_at_once_train_once(small_recipe):
    """The test holds the build lock while two processes ask for the world; once it lets go, one
    trains and the other waits for it and uses its result."""
    small_recipe.mkdir(parents=True)
    env = {**os.environ, "LUNA_TINY_CACHE": str(small_recipe)}
    with open(small_recipe / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", TRAIN_SMALL, json.dumps(SMALL)],
                env=env,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in range(2)
        ]
        for proc in procs:  # each says it is waiting before it blocks on the lock
            for line in proc.stderr:
                if "another process is training the tiny world" in line:
                    break
        assert not list(small_recipe.glob("*/complete.json"))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["trained"] for r in results) == [0, 1]
    assert results[0]["root"] == results[1]["root"]


def test_a_failed_training_leaves_nothing_and_the_next_call_trains(small_recipe, monkeypatch):
    original = tiny._train

    def interrupted(dest: Path, key: str, progress: bool) -> None:
        (dest / "vision").mkdir()
        (dest / "vision" / "half-written.bin").write_bytes(b"\0" * 10)
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "_train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny.ensure_tiny_models(progress=False)
    assert [p.name for p in small_recipe.iterdir()] == [".build.lock"]
    monkeypatch.setattr(tiny, "_train", original)
    assert (tiny.ensure_tiny_models(progress=False) / "complete.json").exists()


def test_a_home_with_old_random_tiny_models_moves_to_the_trained_world(tmp_path, tiny_models):
    from luna_core.models.profiles import resolve_profile

    old = tmp_path / "models" / "tiny"
    (old / "vision").mkdir(parents=True)
    (old / "complete.json").write_text(json.dumps({"version": "2"}))
    (tmp_path / "models" / "tiny-ip-adapter").mkdir()
    profile = resolve_profile("tiny", tmp_path / "models")
    assert not old.exists() and not (tmp_path / "models" / "tiny-ip-adapter").exists()
    assert Path(profile.vision_model).parent == tiny_models
    assert profile.vision_revision == f"v{tiny.TINY_VERSION}-{tiny_models.name}", (
        "stores of the old models re-embed"
    )


def test_rebuild_trains_anew_in_place(small_recipe, capsys):
    from luna_cli.main import main

    assert main(["tiny-world", "--quiet"]) == 0
    first = capsys.readouterr().out
    assert "Training the tiny world" in first and "trained in" in first
    root = tiny_world.tiny_world_root()
    assert main(["tiny-world"]) == 0 and "(cached)" in capsys.readouterr().out
    (root / "marker").write_text("from the first build")
    assert main(["tiny-world", "--rebuild", "--quiet"]) == 0
    assert (root / "complete.json").exists() and not (root / "marker").exists()


# ---------------------------------------------------------------- what the cached world learned


def _held_out(count: int, size: int, seed: int = 4242):
    import random

    rng = random.Random(seed)
    specs = [random_prompt(rng) for _ in range(count)]
    return specs, [draw_picture(s, rng.randrange(2**31), (size, size)) for s in specs]


def test_the_clip_pair_names_the_colour_and_background_of_held_out_pictures(tiny_models):
    import torch

    from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder

    vision = VisionEncoder(str(tiny_models / "vision"), None, "cpu", torch.float32)
    text = SDXLTextEncoder(str(tiny_models / "sdxl"), None, "cpu", torch.float32)
    specs, pictures = _held_out(40, 256)
    images = vision.embed_pixels(np.stack([vision.preprocess(p) for p in pictures]))
    colours, right = list(COLOURS), 0
    for spec, image in zip(specs, images):
        pooled = text.encode(
            [PromptSpec(**{**spec.__dict__, "colour": c}).prompt for c in colours]
        )[1]
        right += (
            colours[int(np.argmax(pooled @ image / np.linalg.norm(pooled, axis=1)))] == spec.colour
        )
    # 38-40 of 40 on held-out sets of five seeds; chance is 4.
    assert right >= 32, f"zero-shot colour {right}/40 (chance 4)"


def test_the_vae_reconstructs_demo_sized_pictures(tiny_models):
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_models / "sdxl" / "vae").eval()
    _, pictures = _held_out(6, 256)
    x = (
        torch.from_numpy(np.stack([np.asarray(p) for p in pictures])).permute(0, 3, 1, 2).float()
        / 127.5
        - 1
    )
    with torch.no_grad():
        out = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    psnr = 10 * torch.log10(4 / ((out - x) ** 2).flatten(1).mean(1))
    # Held-out sets of other seeds (1, 2, 3, 5) reconstruct at 23.5-27.0 dB on this world; this
    # one at 23.5. The bound leaves that spread again below it, for other CPUs' training.
    assert float(psnr.mean()) > 20, psnr


def test_the_unet_follows_the_prompt(tiny_models):
    """Regenerated at strength 0.6, held-out pictures stay closer to themselves (CLIP-I) with their
    own prompt than with the empty prompt."""
    import torch

    from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
    from luna_core.refine.options import SamplerSettings
    from luna_core.refine.sampler import ItemConditioning, SDXLSampler

    vision = VisionEncoder(str(tiny_models / "vision"), None, "cpu", torch.float32)
    text = SDXLTextEncoder(str(tiny_models / "sdxl"), None, "cpu", torch.float32)
    sampler = SDXLSampler(str(tiny_models / "sdxl"), None, torch.device("cpu"), torch.float32)
    specs, pictures = _held_out(24, sampler.native_size)
    original = vision.embed_pixels(np.stack([vision.preprocess(p) for p in pictures]))
    scores = {}
    for name, prompts in (("true", [s.prompt for s in specs]), ("empty", [""] * len(specs))):
        hidden, pooled = text.encode(prompts)
        conditions = [
            ItemConditioning(h, p, np.zeros_like(h), np.zeros_like(p))
            for h, p in zip(hidden, pooled)
        ]
        side = sampler.native_size
        out = sampler.refine(
            pictures,
            conditions,
            np.array([[side, side, 0, 0, side, side]] * len(specs), np.float32),
            list(range(len(specs))),
            SamplerSettings(strength=0.6, steps=8),
        )
        from PIL import Image

        regenerated = [
            Image.fromarray(np.clip((o + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)) for o in out
        ]
        scores[name] = np.sum(
            vision.embed_pixels(np.stack([vision.preprocess(p) for p in regenerated])) * original, 1
        )
    # The gap is 0.09-0.21 on held-out sets of five seeds: 0.02 leaves the spread below it.
    assert scores["true"].mean() > scores["empty"].mean() + 0.02, {
        k: float(v.mean()) for k, v in scores.items()
    }
