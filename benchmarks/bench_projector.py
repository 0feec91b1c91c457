"""Projector benchmark: per architecture, parameters, size on disk, CPU latency at batch 1 and 64
(SDXL widths), training pairs/s, and val metrics next to the vault k-NN answer and the mean
conditioning on the same val pairs (tiny profile: these check the pipeline, not quality).

    .venv/bin/python benchmarks/bench_projector.py --images 400
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from luna_core.projector.models import (
    ARCHITECTURES,
    ProjectorConfig,
    build_projector,
    parameter_count,
)


def sdxl_width_figures() -> list[dict]:
    from safetensors.torch import save_file

    rows = []
    torch.set_num_threads(2)
    for arch in ARCHITECTURES:
        model = build_projector(ProjectorConfig(arch=arch)).eval()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "w.safetensors"
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
            size = path.stat().st_size
        times = {}
        with torch.no_grad():
            for batch in (1, 64):
                x = torch.randn(batch, 1024)
                model(x)
                started, n = time.perf_counter(), 0
                while time.perf_counter() - started < 2.0:
                    model(x)
                    n += 1
                times[batch] = (time.perf_counter() - started) / n / batch * 1000
        rows.append(
            {
                "arch": arch,
                "params": parameter_count(model),
                "MB": size / 1e6,
                "ms_per_image_b1": times[1],
                "ms_per_image_b64": times[64],
            }
        )
        print(
            f"{arch:10s} {rows[-1]['params'] / 1e6:6.2f} M params  {size / 1e6:7.1f} MB  "
            f"{times[1]:6.2f} ms/img at batch 1  {times[64]:6.2f} ms/img at batch 64",
            flush=True,
        )
    return rows


def tiny_quality(images: int) -> list[dict]:
    from luna_core.ask.vault_query import VaultQuery
    from luna_core.catalog.library_view import build_library
    from luna_core.home.home import LunaHome
    from luna_core.index.build import update_index
    from luna_core.ingest.run import IngestOptions, ingest
    from luna_core.models.profiles import resolve_profile
    from luna_core.projector.pairs import load_pairs
    from luna_core.projector.train import TrainSettings, _Stores, losses, train_projector
    from luna_core.samples import make_sample_library
    from luna_core.vault.embed import EmbedOptions, embed_images
    from luna_core.vault.embed_prompts import embed_prompts

    work = Path(tempfile.mkdtemp(prefix="luna-bench-projector-"))
    make_sample_library(work / "library", images, seed=5, size=(96, 96), broken=False)
    home = LunaHome.resolve(work / "home").ensure()
    ingest(home.catalog_path, [str(work / "library")], IngestOptions(progress=False))
    profile = resolve_profile("tiny", home.models_dir)
    embed_images(home, profile, EmbedOptions(progress=False))
    embed_prompts(home, profile, EmbedOptions(progress=False))
    build_library(home, profile)
    update_index(home, profile)
    stores = _Stores(home, profile)
    val = load_pairs(home, "val")
    val_x = stores.embeddings(val.vision_rows)
    rows = []
    settings = TrainSettings(epochs=20, batch_size=16, min_train_pairs=8, min_val_pairs=2)
    for arch in ARCHITECTURES:
        result = train_projector(
            home, profile, ProjectorConfig(arch=arch, hidden=64, heads=2, rank=16), settings
        )
        rows.append(
            {"answer": f"projector {arch}", "pairs_per_s": result.pairs_per_s, **result.val_metrics}
        )

    # The vault's k-NN answer for each val image, its own entry excluded, and the mean conditioning.
    vault = VaultQuery(home, profile)
    totals = {"knn": {}, "mean": {}}
    train = load_pairs(home, "train")
    mean_tokens = torch.zeros(stores.text.fields["prompt_embeds"])
    mean_pooled = torch.zeros(stores.text.fields["pooled_prompt_embeds"])
    for start in range(0, len(train.prompt_rows), 64):
        t, p = stores.targets(train.prompt_rows[start : start + 64])
        mean_tokens += t.sum(0)
        mean_pooled += p.sum(0)
    mean_tokens /= len(train.prompt_rows)
    mean_pooled /= len(train.prompt_rows)
    for i, embedding in enumerate(val_x.astype(np.float32)):
        neighbors = [n for n in vault.nearest(embedding, 6) if n.image_id != int(val.image_ids[i])][
            :5
        ]
        lookup_rows = vault.index.rows_for(
            np.array([n.image_id for n in neighbors], dtype=np.int64)
        )
        prompt_rows = [int(vault.index.lookup.column("prompt_row")[r].as_py()) for r in lookup_rows]
        weights = np.array([n.weight for n in neighbors])
        weights /= weights.sum()
        knn_tokens, knn_pooled = vault._mean_rows(prompt_rows, weights)
        target_tokens, target_pooled = stores.targets(val.prompt_rows[i : i + 1])
        for name, (tok, pool) in {
            "knn": (torch.from_numpy(knn_tokens)[None], torch.from_numpy(knn_pooled)[None]),
            "mean": (mean_tokens[None], mean_pooled[None]),
        }.items():
            loss, metrics = losses(tok, pool, target_tokens, target_pooled)
            for key, value in {"loss": float(loss), **metrics}.items():
                totals[name][key] = totals[name].get(key, 0.0) + value / len(val_x)
    rows.append({"answer": "vault k-NN (k=5)", "pairs_per_s": float("nan"), **totals["knn"]})
    rows.append({"answer": "mean conditioning", "pairs_per_s": float("nan"), **totals["mean"]})
    print(
        f"\ntiny profile, {images} images: {len(train.prompt_rows)} train / "
        f"{len(val.prompt_rows)} val pairs "
        "(random-weight encoders: pipeline check, not quality)"
    )
    for row in rows:
        print(
            f"  {row['answer']:22s} val loss {row['loss']:.4f}  token cos "
            f"{row['token_cosine']:.4f}  "
            f"pooled cos {row['pooled_cosine']:.4f}  train {row['pairs_per_s']:8.0f} pairs/s",
            flush=True,
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--json")
    args = parser.parse_args()
    print("SDXL widths (in 1024, out [77, 2048] + [1280]), CPU, 2 threads:")
    widths = sdxl_width_figures()
    quality = tiny_quality(args.images)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"sdxl_widths": widths, "tiny_quality": quality}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
