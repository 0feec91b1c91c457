"""Random refinement items for the sampler tests: pictures, conditionings at the tiny profile's
widths, micro-conditioning rows, per-item seeds and IP-Adapter embeddings."""

from __future__ import annotations

import numpy as np

from luna_core.refine.sampler import ItemConditioning, item_seed


def random_items(n: int, seed: int, sampler_seed: int):
    """(images, conditions, time_ids, seeds, ip_embeds) for n 32² items."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    conditions = [
        ItemConditioning(
            rng.normal(size=(77, 96)).astype(np.float32),
            rng.normal(size=48).astype(np.float32),
            rng.normal(size=(77, 96)).astype(np.float32),
            rng.normal(size=48).astype(np.float32),
        )
        for _ in range(n)
    ]
    time_ids = np.array([[256, 256, 8 * i, 16 * i, 32, 32] for i in range(n)], np.float32)
    seeds = [item_seed(sampler_seed, 0, i) for i in range(n)]
    ip = rng.normal(size=(n, 48)).astype(np.float32)
    return images, conditions, time_ids, seeds, ip
