"""Append-only row stores in Zarr v3: fixed-shape float16 rows, one array per field.

Rows are written first and made visible only when the catalog commits their row numbers, so the
store itself never needs a transaction: rows past the committed high-water mark are garbage from an
interrupted run and are overwritten by the next one. One writer per store at a time (a file lock);
any number of readers, who read only committed rows.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from luna_core.errors import BusyError, CorruptStoreError, LunaConfigError, NotBuiltError
from luna_core.storage import is_remote, location

DTYPE = "float16"
OPEN_SHARDS = 256  # shard files a reader keeps open per array


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

    @classmethod
    def open(cls, path: str | Path, fields: dict[str, tuple[int, ...]], layout: Layout,
             attrs: dict | None = None, create: bool = True) -> "RowStore":
        """Open the store at `path`, creating it for these row shapes; refuse a store of other shapes."""
        import zarr

        path = location(path)
        if not path.exists():
            if not create:
                raise NotBuiltError(f"no vault store at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
            from zarr.codecs import Crc32cCodec

            group = zarr.open_group(str(path), mode="a", attributes={"luna": attrs or {}})
            for name, row_shape in fields.items():
                chunk = (layout.rows_per_chunk, *row_shape)
                shard = (layout.rows_per_shard, *row_shape)
                # No compression (float16 embeddings barely compress); a CRC32C per chunk, so a damaged
                # row is an error, never an answer.
                group.create_array(name, shape=(0, *row_shape), chunks=chunk, shards=shard, dtype=DTYPE,
                                   fill_value=0, compressors=[Crc32cCodec()])
            return cls(path, group, fields, layout)
        group = zarr.open_group(str(path), mode="a")
        for name, row_shape in fields.items():
            if name not in group:
                raise LunaConfigError(f"vault store {path} has no array {name!r}; it was made for another model")
            stored = tuple(group[name].shape[1:])
            if stored != tuple(row_shape):
                raise LunaConfigError(
                    f"vault store {path} holds {name} rows of shape {stored}, but the configured model gives "
                    f"{tuple(row_shape)}: the model changed under the same name. Use another model id/revision, "
                    "or move the store away to rebuild it."
                )
        return cls(path, group, fields, layout)

    @classmethod
    def open_readonly(cls, path: str | Path, layout: Layout) -> "RowStore":
        """An existing store for reading, with the row shapes it holds (every array of the group)."""
        import zarr

        path = location(path)
        if not path.exists():
            raise NotBuiltError(f"vault store {path} is missing: materialize the embedding assets first")
        try:
            group = zarr.open_group(str(path), mode="r")
            with warnings.catch_warnings():  # the writer's lock file beside the arrays is not a zarr node
                warnings.simplefilter("ignore")
                fields = {name: tuple(array.shape[1:]) for name, array in sorted(group.arrays())}
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptStoreError(f"vault store {path} cannot be read ({exc})") from None
        if not fields:
            raise CorruptStoreError(f"vault store {path} holds no arrays")
        return cls(path, group, fields, layout)

    @property
    def checksummed(self) -> bool:
        """Whether the arrays carry a CRC32C per chunk (stores written before Luna added them do not)."""
        return all(_inner_codecs(self.path / name) == ["bytes", "crc32c"] for name in self.fields)

    def add_checksums(self) -> list[str]:
        """Rewrite the arrays written before Luna added checksums with a CRC32C per chunk; returns the
        arrays rewritten. Crash-safe: each array is copied beside itself, then swapped in by renames, and
        an interrupted swap is finished by the next call. Take the writer lock first."""
        import shutil

        import zarr
        from zarr.codecs import Crc32cCodec

        done = []
        for name, row_shape in self.fields.items():
            old, new = self.path / f"{name}.old", self.path / f"{name}.crc"
            if not (self.path / name).exists() and old.exists() and new.exists():
                os.rename(new, self.path / name)  # finish a swap a crash interrupted
            shutil.rmtree(old, ignore_errors=True)
            if _inner_codecs(self.path / name) == ["bytes", "crc32c"]:
                continue
            shutil.rmtree(new, ignore_errors=True)
            source = zarr.open_array(str(self.path / name), mode="r")
            target = zarr.open_group(str(self.path), mode="a").create_array(
                f"{name}.crc", shape=source.shape, chunks=(self.layout.rows_per_chunk, *row_shape),
                shards=(self.layout.rows_per_shard, *row_shape), dtype=DTYPE, fill_value=0,
                compressors=[Crc32cCodec()])
            for start in range(0, source.shape[0], self.layout.rows_per_shard):
                target[start : start + self.layout.rows_per_shard] = source[start : start + self.layout.rows_per_shard]
            os.rename(self.path / name, old)
            os.rename(new, self.path / name)
            shutil.rmtree(old, ignore_errors=True)
            done.append(name)
        if done:
            import zarr as _zarr

            self.group = _zarr.open_group(str(self.path), mode="a")
            self.__dict__.pop("_readers", None)
        return done

    @property
    def capacity(self) -> int:
        return int(self.group[next(iter(self.fields))].shape[0])

    def write(self, start: int, data: dict[str, np.ndarray]) -> None:
        """Write rows [start, start + n) of every field, growing the arrays a whole shard at a time."""
        n = len(next(iter(data.values())))
        end = start + n
        if end > self.capacity:
            shard = self.layout.rows_per_shard
            new_capacity = -(-end // shard) * shard
            for name, row_shape in self.fields.items():
                self.group[name].resize((new_capacity, *row_shape))
        for name, values in data.items():
            if values.shape != (n, *self.fields[name]):
                raise ValueError(f"{name}: got {values.shape}, expected {(n, *self.fields[name])}")
            self.group[name][start:end] = values.astype(DTYPE, copy=False)

    def read(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        array = self.group[name]
        try:
            if isinstance(rows, slice):
                return array[rows]
            rows = np.asarray(rows, dtype=np.int64)
            if rows.size == 0:
                return np.zeros((0, *self.fields[name]), dtype=DTYPE)
            order = np.argsort(rows)  # sorted reads touch each chunk once
            values = array.get_orthogonal_selection((rows[order],) + (slice(None),) * len(self.fields[name]))
        except (ValueError, RuntimeError) as exc:
            if "checksum" not in str(exc).lower():
                raise
            raise CorruptStoreError(f"vault store {self.path}: array {name!r} holds a damaged chunk ({exc}); "
                                    "rebuild the store (delete it and run luna build)") from None
        out = np.empty_like(values)
        out[order] = values
        return out

    def read_rows(self, name: str, rows: np.ndarray) -> np.ndarray:
        """A few rows at random, fast: straight from the shard files when the layout is the plain one
        Luna writes (chunks of whole rows, uncompressed, index at the shard's end), else through zarr.

        zarr-python spends about a millisecond of machinery per call; a k-NN answer (or an index's
        re-ranking) reads tens of rows scattered over the store, so this path reads them with positioned
        reads instead. A chunk is read whole and checked against its CRC32C the first time this reader
        meets it in an unchanged file (same inode, size and mtime); after that, the rows alone are read."""
        reader = self._shard_reader(name)
        if reader is None:
            return self.read(name, rows)
        return reader(np.asarray(rows, dtype=np.int64))

    def _shard_reader(self, name: str):
        cache = self.__dict__.setdefault("_readers", {})
        if name in cache:
            return cache[name]
        cache[name] = None
        if is_remote(self.path):
            return None  # object storage: zarr's own reads (ranged GETs)
        meta = json.loads((self.path / name / "zarr.json").read_text())
        codecs = meta.get("codecs", [])
        row_shape = tuple(meta["shape"][1:])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = [c.get("name") for c in conf.get("codecs", [])]
        index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
        checksummed = inner == ["bytes", "crc32c"]
        if (conf.get("index_location", "end") != "end" or inner not in (["bytes"], ["bytes", "crc32c"])
                or index_codecs != ["bytes", "crc32c"]
                or conf["chunk_shape"][1:] != list(row_shape) or meta.get("data_type") != DTYPE
                or meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator") != "/"):
            return None
        shard_rows = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
        chunk_rows = conf["chunk_shape"][0]
        row_bytes = int(np.prod(row_shape)) * 2
        index_bytes = shard_rows // chunk_rows * 16 + 4  # (offset, nbytes) uint64 per chunk, then a crc32c
        chunk_bytes = chunk_rows * row_bytes + (4 if checksummed else 0)
        zero_dims = "/".join("0" for _ in row_shape)
        empty = 2**64 - 1
        from google_crc32c import value as crc32c

        def verified(data: bytes, path: Path, what: str) -> np.ndarray:
            """The data (bytes, no copy) without its trailing CRC32C (zarr's crc32c codec: little-endian, at the end)."""
            body = np.frombuffer(data, dtype=np.uint8)[:-4]
            if crc32c(body) != int.from_bytes(data[-4:], "little"):
                raise CorruptStoreError(f"vault store {self.path}: {what} in {path} fails its CRC32C checksum; "
                                        "rebuild the store (delete it and run luna build)")
            return body

        def shard_index(path: Path):
            """(fd, size, chunk index) of a shard file, kept open while the file is unchanged (a query reads a
            few rows from many shards: reopening each, and re-reading its index, cost more than the rows)."""
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                return None  # a shard never written reads as the fill value, as in zarr
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            held = files.get(path)
            if held is not None and held[0] == key:
                files.move_to_end(path)
                return held[1:]
            if held is not None:
                os.close(files.pop(path)[1])
            fd = os.open(path, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                raw_index = verified(os.pread(fd, index_bytes, size - index_bytes), path, "the shard index")
            except BaseException:
                os.close(fd)
                raise
            chunks = np.frombuffer(raw_index, dtype="<u8").reshape(-1, 2).tolist()
            files[path] = (key, fd, size, chunks, bytearray(len(chunks)))  # last: chunks checked while unchanged
            while len(files) > OPEN_SHARDS:
                os.close(files.popitem(last=False)[1][1])
            return files[path][1:]

        chunks_per_shard = shard_rows // chunk_rows
        shard_paths: dict[int, Path] = {}

        def read(rows: np.ndarray) -> np.ndarray:
            out = np.zeros((len(rows), *row_shape), dtype=DTYPE)
            # One pass per distinct chunk, in file order. Per-chunk work is plain Python on ints: a query's
            # re-ranking reads tens of rows from as many chunks.
            chunk_of = rows // chunk_rows
            order = np.argsort(chunk_of, kind="stable")
            sorted_chunks = chunk_of[order]
            starts = np.flatnonzero(np.r_[True, sorted_chunks[1:] != sorted_chunks[:-1]]).tolist()
            keys, order_list, row_list = sorted_chunks[starts].tolist(), order.tolist(), rows.tolist()
            bounds = starts + [len(row_list)]
            opened_now: dict[int, tuple | None] = {}
            with lock:
                for j, key in enumerate(keys):
                    shard, chunk = divmod(key, chunks_per_shard)
                    if shard not in opened_now:
                        path = shard_paths.get(shard)
                        if path is None:
                            path = shard_paths[shard] = self.path / name / "c" / str(shard) / zero_dims
                        opened_now[shard] = (path, shard_index(path))
                    path, opened = opened_now[shard]
                    if opened is None:
                        continue  # a shard never written reads as the fill value, as in zarr
                    fd, size, index, checked = opened
                    offset, nbytes = index[chunk]
                    if offset == empty:
                        continue  # a chunk never written reads as the fill value, as in zarr
                    if nbytes != chunk_bytes or offset + nbytes > size:
                        raise CorruptStoreError(f"vault store {self.path}: the shard index of {path} is damaged "
                                                "(a chunk of the wrong size); rebuild the store")
                    positions = order_list[bounds[j]: bounds[j + 1]]
                    if checksummed and not checked[chunk]:
                        # First read of this chunk from this file: whole, against its checksum.
                        data = verified(os.pread(fd, chunk_bytes, offset), path, f"the chunk of row {row_list[positions[0]]}")
                        checked[chunk] = 1
                        values = np.frombuffer(data, dtype=DTYPE).reshape(chunk_rows, *row_shape)
                        for position in positions:
                            out[position] = values[row_list[position] % chunk_rows]
                        continue
                    # Checked before (the file unchanged since) or no checksum: each row straight into its place.
                    for position in positions:
                        at = offset + (row_list[position] % chunk_rows) * row_bytes
                        if os.preadv(fd, [memoryview(out[position]).cast("B")], at) != row_bytes:
                            raise OSError(f"short read in {path}: the shard changed while being read")
            return out

        files: OrderedDict = OrderedDict()
        lock = threading.Lock()
        weakref.finalize(self, _close_all, files)
        cache[name] = read
        return read

    @contextmanager
    def writer(self) -> Iterator["RowStore"]:
        """Exclusive right to append (two runs of the same asset must not interleave rows). On object
        storage there is no lock: each segment has one writer, its shard's partition run."""
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
            raise BusyError(f"vault store {self.path} is being written by {holder}; wait for that run") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield self
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()


def _close_all(files: dict) -> None:
    for held in files.values():
        os.close(held[1])
    files.clear()


def _inner_codecs(array_path: Path) -> list[str]:
    meta = json.loads((array_path / "zarr.json").read_text())
    return [c.get("name") for c in meta.get("codecs", [{}])[0].get("configuration", {}).get("codecs", [])]
