"""`luna demo`: a sample library, every asset through Dagster, and one answer from each source."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from luna_cli.build import describe_models, record_models, report_run, run_build_all
from luna_cli.output import print_home_summary, print_neighbors
from luna_cli.report import print_report
from luna_cli.vault import open_vault
from luna_core.ask.boxes import Box
from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.images import read_picture
from luna_core.models import single_file
from luna_core.projector.names import DEFAULT_PROJECTOR
from luna_core.refine.options import RefineSettings, SamplerSettings, SourceSettings
from luna_core.samples import make_sample_library
from luna_core.samples.loras import write_sample_lora
from luna_core.samples.sample_library import LORA_NAMES

DEMO_MARKER = "sample_library.json"
# the sample library `luna demo` makes
DEMO_IMAGES, DEMO_SIZE, DEMO_SEED, DEMO_PROFILE = (
    200,
    256,
    0,
    "tiny",
)
# The demo library is small: its projector may train on a few dozen pairs (the default refuses <
# 32).
DEMO_PROJECTOR_CONFIG = {"arch": "kernel", "min_train_pairs": 8, "min_val_pairs": 2}
# The demo's benchmark regenerates 16 test images per source (enough for its intervals) and times
# batching once. It regenerates whole pictures at the tiny UNet's native size and strength 0.75,
# where the conditioning rather than the picture decides what comes back: at the refiners' own 0.35
# the tiny UNet keeps what the picture shows and every source scores alike (docs/benchmarks.md, the
# tiny world).
DEMO_BENCHMARK_CONFIG = {
    "sample_images": 16,
    "grid": 1,
    "strength": 0.75,
    "native_size": True,
    "batching_repeat": 1,
    "latency_repeat": 5,
}


def ensure_samples(home: LunaHome, n_images: int, size: int, seed: int) -> Path:
    """Generate the sample library once per (n, size, seed); a rerun reuses it so ingest stays
    incremental."""

    marker = home.root / DEMO_MARKER
    wanted = {"images": n_images, "size": size, "seed": seed}
    if marker.exists() and home.samples_dir.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                print(
                    f"Sample library already at {home.samples_dir} ({n_images} images); reusing it."
                )
                return home.samples_dir
        except ValueError:
            pass
    bar = tqdm(total=n_images, unit="img", desc="sample library")
    library = make_sample_library(
        home.samples_dir,
        n_images,
        seed=seed,
        size=(size, size),
        on_progress=lambda done, total: bar.update(done - bar.n),
    )
    bar.close()
    marker.write_text(json.dumps(wanted))
    print(
        f"Sample library under {library.root}: {n_images} generated images, plus "
        f"{len(library.files) - n_images} "
        f"odd or broken entries ({len(library.quarantined)} of them must end in quarantine)"
    )
    return home.samples_dir


def cmd_demo(args: argparse.Namespace) -> int:
    home = LunaHome.resolve(args.home)
    recorded = home.recorded_model_profile()
    if recorded not in (None, args.profile):  # before anything is written to the home
        raise LunaConfigError(
            f"{home.root} was built with the '{recorded}' model profile, not '{args.profile}'; "
            "use another --home"
        )
    home.ensure()
    home.set_model_profile(args.profile)
    record_models(home, args)  # a named model is checked before the samples are made
    started = time.perf_counter()
    print(f"Luna home: {home.root}")
    samples = ensure_samples(home, args.images, args.size, args.seed)
    home.add_roots([samples])
    tiny_said = (
        " (small models trained on generated shapes: a check of the method, not CLIP or SDXL)"
    )
    print(f"Models: {describe_models(home)}" + (tiny_said if args.profile == "tiny" else ""))
    print("Materializing every Luna asset through Dagster (job luna_build_all)…")
    if not report_run(
        run_build_all(
            home,
            projector_config=DEMO_PROJECTOR_CONFIG,
            benchmark_config=DEMO_BENCHMARK_CONFIG,
            profile=args.profile,
        )
    ):
        return 1
    print_home_summary(home)
    _demo_query(home, args.profile)
    _demo_projector(home, args.profile)
    _demo_refine(home, args.profile)
    _demo_report(home)
    print(f"\nBuilt in {time.perf_counter() - started:.1f}s:")
    print(f"  catalog      {home.catalog_path}")
    print(f"  vault        {home.vault_dir}")
    print(f"  Dagster runs {home.dagster_home}")
    print("\nOpen the Dagster UI on this home (then http://127.0.0.1:3000):")
    print(f"  luna ui --home {home.root}")
    print(
        f"  # same as: LUNA_HOME={home.root} DAGSTER_HOME={home.dagster_home} dagster dev -w "
        "workspace.yaml"
    )
    return 0


def _demo_sample(home: LunaHome) -> Path | None:
    return next(iter(sorted((home.samples_dir / "comfyui").glob("*.png"))), None)


def _demo_query(home: LunaHome, profile: str) -> None:
    """One vault answer on a crop of a sample image: what a user does first."""

    sample = _demo_sample(home)
    if sample is None:
        return
    with Image.open(sample) as image:
        box = Box(image.width // 4, image.height // 4, image.width // 2, image.height // 2)
    conditioning = open_vault(home, profile).condition(sample, box, k=5)
    out = conditioning.save(home.root / "demo_condition.safetensors")
    print(
        f"\nVault query: the centre crop {box.x},{box.y},{box.width},{box.height} of "
        f"{os.path.relpath(sample, home.root)}"
    )
    print_neighbors(conditioning.neighbors, home)
    print(
        f"  conditioning → {out} (prompt_embeds {list(conditioning.prompt_embeds.shape)}, "
        f"pooled {list(conditioning.pooled_prompt_embeds.shape)})"
    )


def _demo_projector(home: LunaHome, profile: str) -> None:
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.projector.registry import Registry

    champion = Registry(home).champion()
    sample = _demo_sample(home)
    if champion is None or sample is None:
        return
    answer = open_vault(home, profile).condition_with_projector(sample, DEFAULT_PROJECTOR)
    out = answer.save(home.root / "demo_projector.safetensors")
    print(
        f"\nProjector: luna-projector v{champion.version} is @champion ({champion.arch}, val "
        "token cosine "
        f"{champion.token_cos:.4f}); answer for {os.path.relpath(sample, home.root)} → {out}"
    )


def _demo_refine(home: LunaHome, profile: str) -> None:
    """The chess refiner on one sample image, every tile conditioned by its own vault answer."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.refine.refine_report import save_image
    from luna_core.refine.refiner import Refiner

    sample = _demo_sample(home)
    if sample is None:
        return
    resolved = home.profile(profile)
    # sample LoRAs are made for the tiny world's own UNet folder
    tiny_unet = profile == "tiny" and not single_file.is_single_file(resolved.sdxl_model)
    sample_loras = _demo_loras(home, resolved) if tiny_unet else 0
    refiner = Refiner(home, resolved, SourceSettings("vault"))
    settings = RefineSettings(
        sampler=SamplerSettings(steps=8), lora_from_vault=2 if sample_loras else 0
    )
    refined, report = refiner.chess(read_picture(sample), settings)
    out = save_image(refined, home.refined_dir / f"{sample.stem}.chess.png", report)
    passes = ", ".join(f"{p.items} {p.name} tiles in {p.sampler_calls} call" for p in report.passes)
    print(
        f"\nRefined {os.path.relpath(sample, home.root)} with the chess refiner ({passes}, each "
        "tile conditioned by "
        "its own vault "
        f"answer{'; the tiny UNet, trained on generated shapes' if profile == 'tiny' else ''}) → "
        f"{out}"
    )
    if report.loras.get("adapters"):
        with_loras = sum(1 for s in report.loras["items"] if s)
        print(
            f"  {with_loras} of {len(report.loras['items'])} tiles also carried their "
            "neighbours' LoRAs, each its own "
            f"set in the same UNet call ({sample_loras} sample LoRA files with random weights in "
            f"{os.path.relpath(home.root / 'loras', home.root)}/, named as the sample prompts' "
            "<lora:…> tags)"
        )


def _demo_loras(home: LunaHome, profile) -> int:
    """LoRA files named as the sample library's `<lora:…>` tags (random weights, for the tiny
    UNet), in the home's loras/ folder, and [models] lora_dirs pointing there; kept when the home
    already has them."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from diffusers import UNet2DConditionModel

    folder = home.root / "loras"
    missing = [name for name in LORA_NAMES if not (folder / f"{name}.safetensors").exists()]
    if missing:
        unet = UNet2DConditionModel.from_pretrained(profile.sdxl_model, subfolder="unet")
        for seed, name in enumerate(LORA_NAMES):
            if name in missing:
                write_sample_lora(
                    folder / f"{name}.safetensors",
                    unet,
                    seed,
                    layout="kohya-sgm" if seed % 2 else "kohya",
                )
    if not home.config().get("models", {}).get("lora_dirs"):
        home.set_setting("models", "lora_dirs", ["loras"])
    return len(LORA_NAMES)


def _demo_report(home: LunaHome) -> None:
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.reports.report import latest_report

    latest = latest_report(home)
    if latest is not None:
        print_report(*latest)
    else:
        print(
            "\nNo refinement report: no test image of this small library has an embedding and an "
            "encoded prompt "
            "yet (try more --images)."
        )
