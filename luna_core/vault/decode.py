"""Reading library pictures for the vision tower: each file read, checked against its content
hash and preprocessed in worker threads, in order. No store here, so a GPU machine can measure this
path alone."""

from __future__ import annotations

import hashlib
import io
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image


@dataclass
class Loaded:
    content_hash: str
    path: str
    pixels: np.ndarray | None = None
    reason: str | None = None  # failure reason code
    detail: str = ""
    changed: bool = False  # the file no longer holds the ingested bytes: the next ingest sees it


def load_image(item: tuple[str, str], preprocess) -> Loaded:
    content_hash, path = item
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return Loaded(content_hash, path, changed=True)
    except OSError as exc:
        return Loaded(
            content_hash,
            path,
            reason="unreadable",
            detail=f"cannot read the file: {exc.strerror or exc}",
        )
    if hashlib.sha256(data).hexdigest() != content_hash:
        return Loaded(content_hash, path, changed=True)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return Loaded(content_hash, path, pixels=preprocess(image))
    except Exception as exc:  # any decoder error is this file's problem, not the batch's
        return Loaded(
            content_hash, path, reason="decode_failed", detail=f"{type(exc).__name__}: {exc}"
        )


def prefetch(items: Iterable, fn: Callable, workers: int, window: int) -> Iterator:
    """fn over items in worker threads, results in input order, at most `window` in flight.

    Pillow and NumPy release the GIL while decoding, resizing and normalizing, so threads keep the
    model fed while it runs."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="luna-decode") as pool:
        iterator = iter(items)
        pending = deque(pool.submit(fn, item) for item in islice(iterator, window))
        while pending:
            result = pending.popleft().result()
            for item in islice(iterator, 1):
                pending.append(pool.submit(fn, item))
            yield result
