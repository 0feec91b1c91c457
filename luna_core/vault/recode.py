"""Rewrite a row store in another codec (`luna doctor --recode`), crash-safe: the new store is
written beside the old one, then swapped in by two renames; an interrupted swap is finished by the
next call, and an interrupted copy is started over (the old store is untouched until the swap)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from luna_core.home.storage import is_remote
from luna_core.vault.codec import coded
from luna_core.vault.segments import segments_dir
from luna_core.vault.store import Layout, RowStore

FIT_ROWS = 1024  # rows spread over the store that pca-zstd's basis is fitted on


def _finish_swap(path: Path) -> None:
    old, new = path.with_name(path.name + ".old"), path.with_name(path.name + ".recode")
    if not path.exists() and old.exists() and new.exists():
        os.rename(new, path)
    shutil.rmtree(old, ignore_errors=True)


def recode_one(path: Path, layout: Layout, codec: str, say=print) -> bool:
    """Rewrite one store in `codec`; False when it already is."""
    _finish_swap(path)
    store = RowStore.open_readonly(path, layout)
    if store.codec == codec:
        return False
    new = path.with_name(path.name + ".recode")
    shutil.rmtree(new, ignore_errors=True)
    with store.writer():
        attrs = {k: v for k, v in store.group.attrs.get("luna", {}).items() if k != "codec"}
        target = RowStore.open(new, store.fields, layout, attrs=attrs, codec=codec)
        capacity = store.capacity
        sample = np.unique(
            np.linspace(0, max(capacity - 1, 0), min(capacity, FIT_ROWS)).astype(int)
        )
        for name, row_shape in store.fields.items():
            if coded(codec, row_shape) and len(sample):
                target.fit(name, store.read(name, sample))
        step = layout.rows_per_shard
        for start in range(0, capacity, step):
            rows = slice(start, min(start + step, capacity))
            target.write(start, {name: store.read(name, rows) for name in store.fields})
        say(f"recode: {path}: {store.codec} to {codec}, {capacity} rows")
    os.rename(path, path.with_name(path.name + ".old"))
    os.rename(new, path)
    _finish_swap(path)
    return True


def recode_store(path: Path, layout: Layout, codec: str, say=print) -> int:
    """Rewrite a store and each of its segments in `codec`; the number rewritten."""
    if is_remote(path):
        raise NotImplementedError(f"{path}: recode a store on object storage by rebuilding it")
    paths = [path] if path.exists() or path.with_name(path.name + ".old").exists() else []
    folder = segments_dir(path)
    if folder.is_dir():
        paths += sorted(p for p in folder.glob("*.zarr"))
    return sum(recode_one(p, layout, codec, say) for p in paths)
