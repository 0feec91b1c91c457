"""Rows read straight from a Zarr v3 array's shard files, for the layouts Luna writes (chunks of
whole rows, uncompressed, or pca-zstd's codes transposed and zstd-compressed; the shard index at
the file's end; each checked by CRC32C).

zarr-python spends about a millisecond of machinery per call; a k-NN answer (or an index's
re-ranking) reads tens of rows scattered over the store, so this reader uses positioned reads
instead. A chunk is read whole and checked against its CRC32C the first time this reader meets it
in an unchanged file (same inode, size and mtime); after that, its rows alone are read.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
from google_crc32c import value as crc32c
from numcodecs import Zstd

from luna_core.errors import CorruptStoreError

DTYPE = "float16"
# float16 rows, the int8 codec's values, or pca-zstd's codes (luna_core.vault.codec)
DTYPES = (DTYPE, "int8", "uint8")
OPEN_SHARDS = 256  # shard files a reader keeps open per array
_EMPTY = 2**64 - 1  # the shard index's offset of a chunk never written
PLAIN, COMPRESSED = ["bytes", "crc32c"], ["transpose", "bytes", "zstd", "crc32c"]
_ZSTD = Zstd()


class ShardReader:
    """Reads rows of one array of a row store; `ShardReader.open` says None for a layout it
    cannot read."""

    @classmethod
    def open(cls, store: Path, name: str) -> "ShardReader | None":
        meta = json.loads((store / name / "zarr.json").read_text())
        codecs = meta.get("codecs", [])
        row_shape = tuple(meta["shape"][1:])
        if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        inner = [c.get("name") for c in conf.get("codecs", [])]
        compressed = inner == COMPRESSED and conf["codecs"][0]["configuration"]["order"] == [
            0,
            *range(len(row_shape), 0, -1),
        ]
        index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
        if (
            conf.get("index_location", "end") != "end"
            or (inner not in (["bytes"], PLAIN) and not compressed)
            or index_codecs != ["bytes", "crc32c"]
            or conf["chunk_shape"][1:] != list(row_shape)
            or meta.get("data_type") not in DTYPES
            or meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator") != "/"
        ):
            return None
        return cls(
            store,
            name,
            row_shape,
            meta["chunk_grid"]["configuration"]["chunk_shape"][0],
            conf["chunk_shape"][0],
            checksummed=inner[-1] == "crc32c",
            dtype=meta["data_type"],
            compressed=compressed,
        )

    def __init__(
        self,
        store: Path,
        name: str,
        row_shape: tuple[int, ...],
        shard_rows: int,
        chunk_rows: int,
        checksummed: bool,
        dtype: str = DTYPE,
        compressed: bool = False,
    ):
        self.store, self.name, self.row_shape, self.dtype = store, name, row_shape, np.dtype(dtype)
        self.chunk_rows, self.checksummed, self.compressed = chunk_rows, checksummed, compressed
        self.chunks_per_shard = shard_rows // chunk_rows
        self.row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
        # (offset, nbytes) uint64 per chunk, then a crc32c
        self.index_bytes = self.chunks_per_shard * 16 + 4
        self.chunk_bytes = chunk_rows * self.row_bytes + (4 if checksummed else 0)
        self._zero_dims = "/".join("0" for _ in row_shape)
        self._shard_paths: dict[int, Path] = {}
        # path -> (file key, fd, size, chunk index, chunks checked while the file is unchanged)
        self._files: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._files)

    def _verified(self, data: bytes, path: Path, what: str) -> np.ndarray:
        """The data (bytes, no copy) without its trailing CRC32C (zarr's crc32c codec:
        little-endian, at the end)."""
        body = np.frombuffer(data, dtype=np.uint8)[:-4]
        if crc32c(body) != int.from_bytes(data[-4:], "little"):
            raise CorruptStoreError(
                f"vault store {self.store}: {what} in {path} fails its CRC32C checksum; "
                "rebuild the store (delete it and run luna build)"
            )
        return body

    def _shard(self, path: Path):
        """(fd, size, chunk index, checked) of a shard file, kept open while the file is unchanged
        (a query reads a few rows from many shards: reopening each, and re-reading its index,
        cost more than the rows)."""
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None  # a shard never written reads as the fill value, as in zarr
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        held = self._files.get(path)
        if held is not None and held[0] == key:
            self._files.move_to_end(path)
            return held[1:]
        if held is not None:
            os.close(self._files.pop(path)[1])
        fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            raw_index = self._verified(
                os.pread(fd, self.index_bytes, size - self.index_bytes), path, "the shard index"
            )
        except BaseException:
            os.close(fd)
            raise
        chunks = np.frombuffer(raw_index, dtype="<u8").reshape(-1, 2).tolist()
        self._files[path] = (key, fd, size, chunks, bytearray(len(chunks)))
        while len(self._files) > OPEN_SHARDS:
            os.close(self._files.popitem(last=False)[1][1])
        return self._files[path][1:]

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The rows [n, *row_shape]; a compressed array's as a view of them kept in stored order
        (channel-major: the codec reads that without a copy)."""
        chunk_rows, row_shape, row_bytes = self.chunk_rows, self.row_shape, self.row_bytes
        if self.compressed:
            stored = np.zeros((len(rows), *row_shape[::-1]), dtype=self.dtype)
            out = stored.transpose(0, *range(len(row_shape), 0, -1))
        else:
            out = np.zeros((len(rows), *row_shape), dtype=self.dtype)
        # One pass per distinct chunk, in file order. Per-chunk work is plain Python on ints: a
        # query's re-ranking reads tens of rows from as many chunks.
        chunk_of = rows // chunk_rows
        order = np.argsort(chunk_of, kind="stable")
        sorted_chunks = chunk_of[order]
        starts = np.flatnonzero(np.r_[True, sorted_chunks[1:] != sorted_chunks[:-1]]).tolist()
        keys, order_list, row_list = sorted_chunks[starts].tolist(), order.tolist(), rows.tolist()
        bounds = starts + [len(row_list)]
        opened_now: dict[int, tuple] = {}
        with self._lock:
            for j, key in enumerate(keys):
                shard, chunk = divmod(key, self.chunks_per_shard)
                if shard not in opened_now:
                    path = self._shard_paths.get(shard)
                    if path is None:
                        path = self._shard_paths[shard] = (
                            self.store / self.name / "c" / str(shard) / self._zero_dims
                        )
                    opened_now[shard] = (path, self._shard(path))
                path, opened = opened_now[shard]
                if opened is None:
                    continue  # a shard never written reads as the fill value, as in zarr
                fd, size, index, checked = opened
                offset, nbytes = index[chunk]
                if offset == _EMPTY:
                    continue  # a chunk never written reads as the fill value, as in zarr
                if (nbytes != self.chunk_bytes and not self.compressed) or offset + nbytes > size:
                    raise CorruptStoreError(
                        f"vault store {self.store}: the shard index of {path} is damaged "
                        "(a chunk of the wrong size); rebuild the store"
                    )
                positions = order_list[bounds[j] : bounds[j + 1]]
                if self.compressed:  # read whole, checked, decompressed in place
                    data = self._verified(
                        os.pread(fd, nbytes, offset),
                        path,
                        f"the chunk of row {row_list[positions[0]]}",
                    )
                    self._unpack(data, stored, positions, [row_list[p] for p in positions])
                    continue
                if self.checksummed and not checked[chunk]:
                    # First read of this chunk from this file: whole, against its checksum.
                    data = self._verified(
                        os.pread(fd, self.chunk_bytes, offset),
                        path,
                        f"the chunk of row {row_list[positions[0]]}",
                    )
                    checked[chunk] = 1
                    values = np.frombuffer(data, dtype=self.dtype).reshape(chunk_rows, *row_shape)
                    for position in positions:
                        out[position] = values[row_list[position] % chunk_rows]
                    continue
                # Checked before (the file unchanged since) or no checksum: each row straight into
                # its place.
                for position in positions:
                    at = offset + (row_list[position] % chunk_rows) * row_bytes
                    if os.preadv(fd, [memoryview(out[position]).cast("B")], at) != row_bytes:
                        raise OSError(f"short read in {path}: the shard changed while being read")
        return out

    def _unpack(self, data: np.ndarray, stored: np.ndarray, positions: list, rows: list) -> None:
        """One compressed chunk into the rows of `stored` (stored order) that want it."""
        if self.chunk_rows == 1:  # the text layout: straight into the first row that wants it
            _ZSTD.decode(data, out=memoryview(stored[positions[0]]).cast("B"))
            for position in positions[1:]:
                stored[position] = stored[positions[0]]
            return
        shape = (self.chunk_rows, *self.row_shape[::-1])
        values = np.frombuffer(_ZSTD.decode(data), dtype=self.dtype).reshape(shape)
        for position, row in zip(positions, rows):
            stored[position] = values[row % self.chunk_rows]


def _close_all(files: dict) -> None:
    for held in files.values():
        os.close(held[1])
    files.clear()
