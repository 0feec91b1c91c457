"""Segment stores: the vault written by several machines at once, without a shared lock.

A shard of the items (by the first 32 bits of the content or prompt hash) is embedded into its own
segment store beside the store (`<store>.zarr.segments/<count>-<index>.zarr`) and recorded in small
Parquet manifests (item, row) there: no catalog write, no lock shared with any other shard. One
commit step then puts every new manifest into the catalog in one transaction; committing a manifest
twice adds nothing.

Rows keep one number space: a segment's rows are `segment_id << 40 | local row`, the base store's
rows are below 2**40. Readers ask `open_store` for the store of a profile and read any row through
the catalog, whichever segment holds it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.home.storage import location, read_parquet, tree_bytes
from luna_core.models.profiles import ModelProfile
from luna_core.vault.store import TEXT_LAYOUT, VISION_LAYOUT, RowStore

SEGMENT_BITS = 40
LOCAL_MASK = (1 << SEGMENT_BITS) - 1
MAX_SHARDS = 1024


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the items whose hash's first 32 bits are `index` modulo `count`."""

    index: int
    count: int

    def __post_init__(self):
        if not (1 <= self.count <= MAX_SHARDS) or not (0 <= self.index < self.count):
            raise LunaConfigError(
                f"shard {self.index} of {self.count}: need 0 <= index < count <= {MAX_SHARDS}"
            )

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """'3/16' → shard 3 of 16."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise LunaConfigError(f"shard {text!r} is not INDEX/COUNT (e.g. 3/16)") from None
        return cls(index, count)

    @classmethod
    def from_key(cls, key: str) -> "Shard":
        """A partition key ('03-of-16') → shard 3 of 16."""
        match = re.fullmatch(r"(\d+)-of-(\d+)", key)
        if not match:
            raise LunaConfigError(
                f"partition key {key!r} is not a shard (INDEX-of-COUNT, e.g. 03-of-16)"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def key(self) -> str:
        """The shard's partition key: '03-of-16'."""
        return f"{self.index:0{len(str(self.count - 1))}d}-of-{self.count}"

    @property
    def segment_id(self) -> int:
        return ((self.count << 10) | self.index) + 1

    @property
    def first_row(self) -> int:
        return self.segment_id << SEGMENT_BITS

    @property
    def name(self) -> str:
        return f"{self.count:04d}-{self.index:04d}"

    def holds(self, key: str) -> bool:
        return int(key[:8], 16) % self.count == self.index

    def sql(self, column: str) -> str:
        """The SQL condition selecting this shard's items by their hash column."""
        return f"(('0x' || left({column}, 8))::UBIGINT % {self.count}) = {self.index}"


def shard_keys(count: int) -> list[str]:
    """The partition keys of `count` shards, in order."""
    return [Shard(index, count).key for index in range(count)]


def segments_dir(store_path: Path) -> Path:
    store_path = location(store_path)
    return store_path.with_name(store_path.name + ".segments")


def segment_path(store_path: Path, shard: Shard) -> Path:
    return segments_dir(store_path) / f"{shard.name}.zarr"


def pending_manifests(store_path: Path) -> list[Path]:
    return sorted((segments_dir(store_path) / "manifests").glob("*.parquet"))


def committed_dir(store_path: Path) -> Path:
    return segments_dir(store_path) / "committed"


def shard_manifests(store_path: Path, shard: Shard, committed: bool = False) -> list[Path]:
    """The manifests a shard wrote that wait for the commit (with `committed`, also those
    committed)."""
    folders = [segments_dir(store_path) / "manifests"] + (
        [committed_dir(store_path)] if committed else []
    )
    return sorted(path for folder in folders for path in folder.glob(f"{shard.name}-*.parquet"))


def read_manifests(paths: list[Path]):
    """The manifests' rows as one Arrow table (key, row, ...; row null for a failure)."""

    return pa.concat_tables([read_parquet(path) for path in paths]) if paths else None


class SegmentedStore:
    """The base store and its segments, read as one store by global row numbers."""

    def __init__(self, path: Path, base: RowStore | None, segments: dict[int, RowStore]):
        self.path, self.base, self.segments = location(path), base, segments
        first = base if base is not None else next(iter(segments.values()))
        self.fields, self.layout = first.fields, first.layout

    def _parts(self, rows: np.ndarray):
        rows = np.asarray(rows, dtype=np.int64)
        ids = rows >> SEGMENT_BITS
        for segment_id in np.unique(ids):
            positions = np.nonzero(ids == segment_id)[0]
            store = self.base if segment_id == 0 else self.segments.get(int(segment_id))
            if store is None:
                raise LunaConfigError(
                    f"vault store {self.path}: rows {rows[positions[:3]].tolist()} belong to a "
                    f"segment that is not there (id {int(segment_id)}); run the commit again or "
                    "re-embed the missing shard"
                )
            yield store, positions, rows[positions] & LOCAL_MASK

    def _gather(self, name: str, rows, read) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), *self.fields[name]), dtype="float16")
        for store, positions, local in self._parts(rows):
            out[positions] = read(store, local)
        return out

    def read(self, name: str, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.capacity))
        return self._gather(name, rows, lambda store, local: store.read(name, local))

    def read_rows(self, name: str, rows) -> np.ndarray:
        return self._gather(name, rows, lambda store, local: store.read_rows(name, local))

    def read_rows_linear(self, name: str, rows):
        """RowStore.read_rows_linear: rows of one part are summed in that part's own form; rows of
        several parts (each with its own pca-zstd fit) are decoded."""
        parts = list(self._parts(rows))
        if len(parts) == 1 and len(parts[0][1]) == len(rows):
            store, _, local = parts[0]
            return store.read_rows_linear(name, local)
        return self.read_rows(name, rows), lambda summed, total_weight=1.0: summed

    @property
    def capacity(self) -> int:
        return self.base.capacity if self.base is not None else 0

    @property
    def checksummed(self) -> bool:
        return all(
            s.checksummed for s in ([self.base] if self.base else []) + list(self.segments.values())
        )


def open_store(path: Path, layout) -> RowStore | SegmentedStore:
    """The store at `path` for reading: a plain RowStore, or the base and its segments together."""
    path = location(path)
    folder = segments_dir(path)
    segment_paths = sorted(folder.glob("*.zarr")) if folder.is_dir() else []
    if not segment_paths:
        return RowStore.open_readonly(path, layout)
    base = RowStore.open_readonly(path, layout) if path.exists() else None
    segments = {}
    for segment in segment_paths:
        count, index = (int(part) for part in segment.stem.split("-"))
        segments[Shard(index, count).segment_id] = RowStore.open_readonly(segment, layout)
    return SegmentedStore(path, base, segments)


def store_bytes(path: Path) -> int:
    """Bytes on disk of a store and its segments (manifests included)."""
    return tree_bytes(path) + tree_bytes(segments_dir(path))


def store_exists(path: Path) -> bool:
    """The base store or any segment of it."""
    folder = segments_dir(path)
    return location(path).exists() or (folder.is_dir() and any(folder.glob("*.zarr")))


def open_vision_store(home: LunaHome, profile: ModelProfile) -> RowStore:
    """The profile's image embeddings for reading: the store and any segments written by shards."""
    return open_store(home.vision_store(profile), VISION_LAYOUT)


def open_text_store(home: LunaHome, profile: ModelProfile) -> RowStore:
    """The profile's prompt conditionings for reading: the store and any segments written by
    shards."""
    return open_store(home.text_store(profile), TEXT_LAYOUT)
