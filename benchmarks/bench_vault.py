"""Vault benchmarks, each printed as ratios measured side by side in one run.

# Pipeline efficiency: the whole vision_embeddings path vs the bare model forward, with the real
# CLIP ViT-H/14 architecture (RANDOM weights: speed only, these are not CLIP embeddings).
.venv/bin/python benchmarks/bench_vault.py efficiency --images 256 --size 1024

# Bytes on disk per image, both stores, vs a naive float32-per-image layout.
.venv/bin/python benchmarks/bench_vault.py storage --images 3000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from luna_core.home.home import LunaHome
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.samples import make_sample_library

VIT_H_14 = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=1024,
    hidden_act="gelu",
)
CLIP_PREPROCESSOR = {
    "image_processor_type": "CLIPImageProcessor",
    "do_resize": True,
    "size": {"shortest_edge": 224},
    "resample": 3,
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "do_convert_rgb": True,
}


def _library(work: Path, images: int, size: int, grain: float, broken: bool = False) -> Path:
    started = time.perf_counter()
    make_sample_library(
        work / "library", images, seed=3, size=(size, size), grain=grain, broken=broken
    )
    print(f"generated {images} images of {size}x{size} in {time.perf_counter() - started:.0f}s")
    return work / "library"


def efficiency(args: argparse.Namespace) -> dict:
    import torch
    from PIL import Image
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from luna_core.models.encoders import VisionEncoder
    from luna_core.models.profiles import ModelProfile, choose_device, choose_dtype
    from luna_core.vault.embed import EmbedOptions, embed_images

    work = Path(args.work or tempfile.mkdtemp(prefix="luna-bench-vault-"))
    library = work / "library"
    if not library.exists():
        _library(work, args.images, args.size, grain=6.0)
    device = choose_device(args.device)
    dtype = choose_dtype(device, args.dtype)
    model_dir = work / "vit_h14_random"
    if not (model_dir / "model.safetensors").exists() and not list(model_dir.glob("*.safetensors")):
        torch.manual_seed(0)
        print("building a random-weight CLIP ViT-H/14 (architecture only)…")
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_H_14)).to(dtype)
        model.save_pretrained(model_dir)
        (model_dir / "preprocessor_config.json").write_text(json.dumps(CLIP_PREPROCESSOR))
        del model
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(
        f"device {device}, dtype {dtype}, torch threads {torch.get_num_threads()}, batch "
        f"{args.batch}"
    )

    shutil.rmtree(work / "home", ignore_errors=True)
    home = LunaHome.resolve(work / "home").ensure()
    ingest(home.catalog_path, [str(library)], IngestOptions(progress=False))

    # 1. The bare forward on the same preprocessed tensors (preprocessing not timed).
    encoder = VisionEncoder(str(model_dir), None, device, dtype)
    files = sorted(p for p in library.rglob("*") if p.is_file())[: args.images]
    pixels = np.stack([encoder.preprocess(Image.open(p)) for p in files])
    encoder.embed_pixels(pixels[: args.batch])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for start in range(0, len(pixels), args.batch):
        encoder.embed_pixels(pixels[start : start + args.batch])
    if device.type == "cuda":
        torch.cuda.synchronize()
    bare = len(pixels) / (time.perf_counter() - started)
    del encoder

    # 2. The whole vision_embeddings path: catalog query, read + hash check, decode + preprocess in
    #    threads, forward, Zarr writes, catalog commits. Model load is timed apart.
    profile = ModelProfile("bench", vision_model=str(model_dir), sdxl_model="unused")
    load_started = time.perf_counter()
    VisionEncoder(str(model_dir), None, device, dtype)
    load_seconds = time.perf_counter() - load_started
    report = embed_images(
        home,
        profile,
        EmbedOptions(device=args.device, dtype=args.dtype, batch_size=args.batch, progress=False),
    )
    pipeline_seconds = report.seconds - load_seconds
    whole = report.added / pipeline_seconds
    figures = {
        "device": str(device),
        "dtype": str(dtype),
        "images": report.added,
        "batch": args.batch,
        "bare_forward_img_per_s": bare,
        "whole_path_img_per_s": whole,
        "efficiency": whole / bare,
        "model_load_s": load_seconds,
        "model_share_of_path": report.model_seconds / pipeline_seconds,
    }
    print()
    print(f"bare model forward (ViT-H/14, random weights)   {bare:8.2f} img/s")
    print(
        f"whole vision_embeddings path                    {whole:8.2f} img/s  ({report.added} "
        "images, "
        f"model load {load_seconds:.1f}s excluded)"
    )
    print(f"  efficiency (whole / bare)                     {whole / bare:8.3f}")
    print(f"  model forward share of the path's time        {figures['model_share_of_path']:8.3f}")
    return figures


def storage(args: argparse.Namespace) -> dict:
    from luna_core.catalog.connection import open_catalog
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    work = Path(tempfile.mkdtemp(prefix="luna-bench-storage-"))
    library = _library(work, args.images, 64, grain=0.0)
    home = LunaHome.resolve(work / "home").ensure()
    ingest(home.catalog_path, [str(library)], IngestOptions(progress=False))
    profile = resolve_profile("tiny", home.models_dir)
    vision = embed_images(home, profile, EmbedOptions(progress=False, batch_size=64))
    text = embed_prompts(home, profile, EmbedOptions(progress=False, batch_size=64))
    with open_catalog(home.catalog_path, read_only=True) as con:
        n_images, n_pos, n_neg = con.execute("""
            SELECT count(DISTINCT i.content_hash), count(g.prompt), count(g.negative_prompt)
            FROM images i JOIN generations g USING (content_hash) WHERE i.status =
                'ok'""").fetchone()
        unique_prompts = con.execute("SELECT count(*) FROM prompts").fetchone()[0]
        (shapes,) = con.execute("SELECT shapes FROM vault_stores WHERE kind = 'text'").fetchone()
    shapes = json.loads(shapes)
    seq, width = shapes["prompt_embeds"]
    (pooled,) = shapes["pooled_prompt_embeds"]
    vision_width = 32
    cond_floats = seq * width + pooled
    naive = n_images * vision_width * 4 + (n_pos + n_neg) * cond_floats * 4
    ours = vision.bytes_on_disk + text.bytes_on_disk
    # The same counts at the real widths (ViT-H/14 1024; SDXL 77x2048 + 1280), float16 vs float32.
    real_cond, real_vision = 77 * 2048 + 1280, 1024
    real_ours = n_images * real_vision * 2 + unique_prompts * real_cond * 2
    real_naive = n_images * real_vision * 4 + (n_pos + n_neg) * real_cond * 4
    figures = {
        "images": n_images,
        "prompt uses": n_pos + n_neg,
        "unique prompts": unique_prompts,
        "bytes_per_image_ours": ours / n_images,
        "bytes_per_image_naive_fp32": naive / n_images,
        "ratio": ours / naive,
        "ratio_at_sdxl_widths": real_ours / real_naive,
        "sdxl_widths_GB_per_500k_images_ours": real_ours / n_images * 500_000 / 1e9,
        "sdxl_widths_GB_per_500k_images_naive": real_naive / n_images * 500_000 / 1e9,
    }
    print()
    print(
        f"{n_images} images, {n_pos + n_neg} prompt uses (positive + negative), {unique_prompts} "
        "unique prompt texts"
    )
    print(f"bytes per image, Luna stores (measured on disk, tiny widths)  {ours / n_images:12,.0f}")
    print(f"bytes per image, naive float32 per image (same widths)       {naive / n_images:12,.0f}")
    print(f"  ratio                                                      {ours / naive:12.3f}")
    print(
        "  ratio at SDXL widths (same counts, computed)               "
        f"{real_ours / real_naive:12.3f}"
        f"   -> {figures['sdxl_widths_GB_per_500k_images_ours']:.0f} GB vs "
        f"{figures['sdxl_widths_GB_per_500k_images_naive']:.0f} GB for 500k images"
    )
    shutil.rmtree(work, ignore_errors=True)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="which", required=True)
    eff = sub.add_parser("efficiency")
    eff.add_argument("--images", type=int, default=256)
    eff.add_argument("--size", type=int, default=1024)
    eff.add_argument("--batch", type=int, default=8)
    eff.add_argument("--device", default="auto")
    eff.add_argument("--dtype", default="auto")
    eff.add_argument("--threads", type=int, default=0)
    eff.add_argument("--work", help="keep the library and model here between runs")
    st = sub.add_parser("storage")
    st.add_argument("--images", type=int, default=3000)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    figures = efficiency(args) if args.which == "efficiency" else storage(args)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
