"""Append-only row stores in Zarr v3: fixed-shape float16 rows, one array per field (or, with the
int8 codec, int8 rows and a float16 scale array beside them; with pca-zstd, zstd-compressed int8
codes and the store's fitted basis: luna_core.vault.codec).

Rows are written first and made visible only when the catalog commits their row numbers, so the
store itself never needs a transaction: rows past the committed high-water mark are garbage from an
interrupted run and are overwritten by the next one. One writer per store at a time (a file lock);
any number of readers, who read only committed rows.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import zarr
import zarr as _zarr
from zarr.codecs import Crc32cCodec, TransposeCodec, ZstdCodec

from luna_core.errors import BusyError, CorruptStoreError, LunaConfigError, NotBuiltError
from luna_core.home.storage import is_remote, location
from luna_core.vault.basis_codec import Basis
from luna_core.vault.codec import (
    BASIS_SUFFIX,
    FLOAT16,
    INT8,
    PCA_ZSTD,
    SCALE_SUFFIX,
    SIDE_SUFFIXES,
    TEMPLATE_SUFFIX,
    check_codec,
    coded,
    decode_int8,
    encode_int8,
    field_shape,
    row_arrays,
)
from luna_core.vault.shard_reader import DTYPE, ShardReader

log = logging.getLogger(__name__)
COSINE_ERROR_GOAL = 1e-3  # a pca-zstd token further than this from its value is logged


@dataclass(frozen=True)
class Layout:
    """Rows per chunk (the unit of reading) and per shard (the unit of writing) for one store."""

    rows_per_chunk: int
    rows_per_shard: int


# Image embeddings are small: chunks of 16 rows keep a k-NN answer's random reads small, shards of
# 4,096 rows keep files few. A conditioning row is 77 x 2048 x 2 bytes = 315 KB: one row per chunk,
# 64 per shard (20 MB), matching the write batch so appends rarely rewrite a shard.
VISION_LAYOUT = Layout(rows_per_chunk=16, rows_per_shard=4096)
TEXT_LAYOUT = Layout(rows_per_chunk=1, rows_per_shard=64)


class RowStore:
    def __init__(self, path: Path, group, fields: dict[str, tuple[int, ...]], layout: Layout):
        self.path, self.group, self.fields, self.layout = path, group, fields, layout
        # The codec is the store's own, recorded when it was made: a changed setting applies to new
        # stores.
        self.codec = check_codec(group.attrs.get("luna", {}).get("codec", FLOAT16))

    @classmethod
    def open(
        cls,
        path: str | Path,
        fields: dict[str, tuple[int, ...]],
        layout: Layout,
        attrs: dict | None = None,
        create: bool = True,
        codec: str = FLOAT16,
    ) -> "RowStore":
        """Open the store at `path`, creating it for these row shapes (and values kept by `codec`);
        refuse a store of other shapes. An existing store keeps the codec it was made with."""

        path = location(path)
        if not path.exists():
            if not create:
                raise NotBuiltError(f"no vault store at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)

            group = zarr.open_group(
                str(path),
                mode="a",
                attributes={"luna": {**(attrs or {}), "codec": check_codec(codec)}},
            )
            for name, row_shape in fields.items():
                for array_name, (shape, dtype) in row_arrays(codec, name, row_shape).items():
                    _create_row_array(group, array_name, shape, dtype, layout, codec)
            return cls(path, group, fields, layout)
        group = zarr.open_group(str(path), mode="a")
        for name, row_shape in fields.items():
            if name not in group:
                raise LunaConfigError(
                    f"vault store {path} has no array {name!r}; it was made for another model"
                )
            codec_made = group.attrs.get("luna", {}).get("codec", FLOAT16)
            stored = field_shape(codec_made, tuple(group[name].shape[1:]))
            if stored != tuple(row_shape):
                raise LunaConfigError(
                    f"vault store {path} holds {name} rows of shape {stored}, but the configured "
                    "model gives "
                    f"{tuple(row_shape)}: the model changed under the same name. Use another "
                    "model id/revision, "
                    "or move the store away to rebuild it."
                )
        return cls(path, group, fields, layout)

    @classmethod
    def open_readonly(cls, path: str | Path, layout: Layout) -> "RowStore":
        """An existing store for reading, with the row shapes it holds (every array of the
        group)."""

        path = location(path)
        if not path.exists():
            raise NotBuiltError(
                f"vault store {path} is missing: materialize the embedding assets first"
            )
        try:
            group = zarr.open_group(str(path), mode="r")
            # the writer's lock file beside the arrays is not a zarr node
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arrays = {name: tuple(array.shape[1:]) for name, array in sorted(group.arrays())}
            codec = group.attrs.get("luna", {}).get("codec", FLOAT16)
            fields = {
                name: field_shape(codec, shape)
                for name, shape in arrays.items()
                if not any(
                    name.endswith(suffix) and name[: -len(suffix)] in arrays
                    for suffix in SIDE_SUFFIXES
                )
            }
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptStoreError(f"vault store {path} cannot be read ({exc})") from None
        if not fields:
            raise CorruptStoreError(f"vault store {path} holds no arrays")
        return cls(path, group, fields, layout)

    @property
    def checksummed(self) -> bool:
        """Whether the arrays carry a CRC32C per chunk (stores written before Luna added them do
        not)."""
        return all(_inner_codecs(self.path / name)[-1:] == ["crc32c"] for name in self._arrays())

    def _arrays(self) -> dict[str, tuple[int, ...]]:
        """Every array of rows with its row shape: the fields, and the scales of int8 ones."""
        return {
            array: shape
            for name, row_shape in self.fields.items()
            for array, (shape, _) in row_arrays(self.codec, name, row_shape).items()
        }

    def add_checksums(self) -> list[str]:
        """Rewrite the arrays written before Luna added checksums with a CRC32C per chunk; returns
        the arrays rewritten. Crash-safe: each array is copied beside itself, then swapped in by
        renames, and an interrupted swap is finished by the next call. Take the writer lock
        first."""

        done = []
        for name, row_shape in self._arrays().items():
            old, new = self.path / f"{name}.old", self.path / f"{name}.crc"
            if not (self.path / name).exists() and old.exists() and new.exists():
                os.rename(new, self.path / name)  # finish a swap a crash interrupted
            shutil.rmtree(old, ignore_errors=True)
            if _inner_codecs(self.path / name) == ["bytes", "crc32c"]:
                continue
            shutil.rmtree(new, ignore_errors=True)
            source = zarr.open_array(str(self.path / name), mode="r")
            target = zarr.open_group(str(self.path), mode="a").create_array(
                f"{name}.crc",
                shape=source.shape,
                chunks=(self.layout.rows_per_chunk, *row_shape),
                shards=(self.layout.rows_per_shard, *row_shape),
                dtype=source.dtype,
                fill_value=0,
                compressors=[Crc32cCodec()],
            )
            for start in range(0, source.shape[0], self.layout.rows_per_shard):
                target[start : start + self.layout.rows_per_shard] = source[
                    start : start + self.layout.rows_per_shard
                ]
            os.rename(self.path / name, old)
            os.rename(new, self.path / name)
            shutil.rmtree(old, ignore_errors=True)
            done.append(name)
        if done:
            self.group = _zarr.open_group(str(self.path), mode="a")
            self.__dict__.pop("_readers", None)
        return done

    @property
    def capacity(self) -> int:
        return int(self.group[next(iter(self.fields))].shape[0])

    def write(self, start: int, data: dict[str, np.ndarray]) -> None:
        """Write rows [start, start + n) of every field, growing the arrays a whole shard at a
        time."""
        n = len(next(iter(data.values())))
        end = start + n
        if end > self.capacity:
            shard = self.layout.rows_per_shard
            new_capacity = -(-end // shard) * shard
            for name, row_shape in self._arrays().items():
                self.group[name].resize((new_capacity, *row_shape))
        for name, values in data.items():
            if values.shape != (n, *self.fields[name]):
                raise ValueError(f"{name}: got {values.shape}, expected {(n, *self.fields[name])}")
            if coded(self.codec, self.fields[name]) and self.codec == INT8:
                quantized, scale = encode_int8(values)
                self.group[name][start:end] = quantized
                self.group[name + SCALE_SUFFIX][start:end] = scale
            elif coded(self.codec, self.fields[name]):
                codes, worst = self._fitted(name, values).encode(values)
                if worst > COSINE_ERROR_GOAL:
                    log.warning(
                        "vault store %s: rows %d-%d of %s keep a token at cosine error %.1e, over "
                        "the %.0e goal (a coefficient beyond int8's range at any finer step)",
                        self.path,
                        start,
                        end - 1,
                        name,
                        worst,
                        COSINE_ERROR_GOAL,
                    )
                self.group[name][start:end] = codes
            else:
                self.group[name][start:end] = values.astype(DTYPE, copy=False)

    def _basis(self, name: str) -> Basis | None:
        """pca-zstd's fit for a field, None before the first write (or after a crash while it was
        being written: no row was coded with it then)."""
        cache = self.__dict__.setdefault("_bases", {})
        if name not in cache:
            parts = [name + TEMPLATE_SUFFIX, name + BASIS_SUFFIX]
            if not all(part in self.group for part in parts):
                return None
            basis = Basis(*(np.asarray(self.group[part][...]) for part in parts))
            if not basis.valid():
                return None
            cache[name] = basis
        return cache[name]

    def _fitted(self, name: str, values: np.ndarray) -> Basis:
        """The field's basis, fitted on these rows and saved (before any row it codes) if the
        store has none yet."""
        return self._basis(name) or self.fit(name, values)

    def fit(self, name: str, values: np.ndarray) -> Basis:
        """Fit pca-zstd's basis for a field on these rows and save it; only before any row of the
        field is written (rows are coded in the basis they were written with)."""
        basis = Basis.fit(values)
        for suffix, array in ((TEMPLATE_SUFFIX, basis.template), (BASIS_SUFFIX, basis.blocks)):
            target = self.group.create_array(
                name + suffix,
                shape=array.shape,
                chunks=array.shape,
                dtype="float32",
                compressors=[Crc32cCodec()],
                overwrite=True,
            )
            target[...] = array
        self.__dict__.setdefault("_bases", {})[name] = basis
        return basis

    def _decoded(self, name: str, read) -> np.ndarray:
        if not coded(self.codec, self.fields[name]):
            return read(name)
        if self.codec == INT8:
            return decode_int8(read(name), read(name + SCALE_SUFFIX))
        codes = read(name)
        basis = self._basis(name)
        if basis is None:  # nothing was written: every row is the fill value
            return np.zeros((len(codes), *self.fields[name]), np.float16)
        return basis.decode(codes)

    def read(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """float16 rows of one field, decoded by the store's codec."""
        return self._decoded(name, lambda array: self._read(array, rows))

    def _read(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        array = self.group[name]
        try:
            if isinstance(rows, slice):
                return array[rows]
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size == 0:
                return np.zeros((0, *array.shape[1:]), dtype=array.dtype)
            order = np.argsort(rows)  # sorted reads touch each chunk once
            values = array.get_orthogonal_selection(
                (rows[order],) + (slice(None),) * (array.ndim - 1)
            )
        except (ValueError, RuntimeError) as exc:
            if "checksum" not in str(exc).lower():
                raise
            raise CorruptStoreError(
                f"vault store {self.path}: array {name!r} holds a damaged chunk ({exc}); "
                "rebuild the store (delete it and run luna build)"
            ) from None
        out = np.empty_like(values)
        out[order] = values
        return out

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A few rows at random, fast: straight from the shard files when the layout is the plain
        one Luna writes (luna_core.vault.shard_reader), else through zarr."""
        return self._decoded(name, lambda array: self._read_rows(array, rows))

    def read_rows_linear(self, name: str, rows: np.ndarray):
        """(values, finish): rows in a form whose weighted sum, given to `finish(summed,
        total_weight)` with `summed` shaped [..., tokens, width], equals the weighted sum of the
        decoded rows. pca-zstd's values are its coefficients: a k-NN answer inverts one sum, not
        k rows."""
        if coded(self.codec, self.fields[name]) and self.codec == PCA_ZSTD:
            basis = self._basis(name)
            if basis is not None:
                return basis.coefficients(self._read_rows(name, rows)), basis.finish
        return self.read_rows(name, rows), _as_summed

    def _read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        reader = self._shard_reader(name)
        if reader is None:
            return self._read(name, rows)
        return reader.read(np.asarray(rows, dtype=np.int64))

    def _shard_reader(self, name: str) -> ShardReader | None:
        cache = self.__dict__.setdefault("_readers", {})
        if name not in cache:  # object storage: zarr's own reads (ranged GETs)
            cache[name] = None if is_remote(self.path) else ShardReader.open(self.path, name)
        return cache[name]

    @contextmanager
    def writer(self) -> Iterator["RowStore"]:
        """Exclusive right to append (two runs of the same asset must not interleave rows). On
        object storage there is no lock: each segment has one writer, its shard's partition run."""
        if is_remote(self.path):
            yield self
            return
        lock = open(self.path / ".writer.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise BusyError(
                f"vault store {self.path} is being written by {holder}; wait for that run"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield self
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def _as_summed(summed: np.ndarray, total_weight: float = 1.0) -> np.ndarray:
    return summed


def _create_row_array(group, name: str, shape, dtype: str, layout: Layout, codec: str) -> None:
    """An empty array of rows, sharded by the layout, a CRC32C per chunk (a damaged row is an
    error, never an answer). float16 and int8 rows are not compressed (they barely compress);
    pca-zstd's codes are zstd-compressed channel-major, each coefficient's values together."""
    coded_rows = codec == PCA_ZSTD and dtype == "uint8"
    group.create_array(
        name,
        shape=(0, *shape),
        chunks=(layout.rows_per_chunk, *shape),
        shards=(layout.rows_per_shard, *shape),
        dtype=dtype,
        fill_value=0,
        filters=[TransposeCodec(order=(0, 2, 1))] if coded_rows else None,
        compressors=[ZstdCodec(level=3), Crc32cCodec()] if coded_rows else [Crc32cCodec()],
    )


def _inner_codecs(array_path: Path) -> list[str]:
    meta = json.loads((array_path / "zarr.json").read_text())
    return [
        c.get("name")
        for c in meta.get("codecs", [{}])[0].get("configuration", {}).get("codecs", [])
    ]
