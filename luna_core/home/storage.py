"""Where the vault and the index live: the home's folder, or object storage (`s3://bucket/prefix`,
any S3-compatible server) through fsspec, set by `[storage] root` in luna.toml or
$LUNA_STORAGE_ROOT.

Paths to stores are `pathlib.Path` on disk and `upath.UPath` on object storage: the same operations
(`/`, `exists`, `glob`, `open`, `read_text`). What differs is here: a file replaced whole (a
rename on disk, one PUT on object storage, which is whole or absent), a move, sizes. Credentials
and the endpoint come from the environment, as for every S3 client (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for a server other than AWS).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Union

import pyarrow as pa
import pyarrow.parquet as pq

Location = Union[Path, "UPath"]  # noqa: F821 (upath is imported only where object storage is used)


def location(value) -> Location:
    """A path on disk, or a UPath for a URL (`s3://…`); Path and UPath objects are returned as
    they are."""
    if isinstance(value, Path) or (type(value).__module__.startswith("upath")):
        return value
    text = os.fspath(value) if not isinstance(value, str) else value
    if "://" not in text:
        return Path(text)
    # optional: only stores on object storage need it
    from upath import UPath

    protocol = text.split("://", 1)[0]
    # Listings are never cached: other machines add segments and manifests between two looks.
    options = (
        {"use_listings_cache": False}
        if protocol in ("s3", "s3a", "gs", "gcs", "az", "abfs")
        else {}
    )
    return UPath(text, **options)


def is_remote(path) -> bool:
    return not isinstance(location(path), Path)


def write_whole(path: Location, data: bytes) -> None:
    """Replace a file with `data` so that readers see the old file or the new one, never a part."""
    if is_remote(path):
        path.write_bytes(data)  # one PUT: the object is whole or absent
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def move(source: Location, target: Location) -> None:
    if is_remote(source):
        source.rename(target)
    else:
        os.replace(source, target)


def remove_tree(path: Location) -> None:
    if is_remote(path):
        if path.exists():
            path.fs.rm(path.path, recursive=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def tree_bytes(path: Location) -> int:
    """Bytes of every file under `path` (0 when it does not exist)."""
    path = location(path)
    if is_remote(path):
        return int(path.fs.du(path.path, total=True)) if path.exists() else 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def read_parquet(path: Location, columns: list[str] | None = None):
    with location(path).open("rb") as fh:
        return pq.read_table(fh, columns=columns)


def parquet_bytes(table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()
