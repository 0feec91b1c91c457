"""Thumbnails for the search page: made once per file version, cached under the home.

A thumbnail's name is the hash of (path, size, mtime): an edited file gets a new one on its next
view and the stale one is never served. Made with the same bounds as ingest (file size, pixels), and
written atomically, so two requests for the same new file do not see half a JPEG.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from luna_core.ask.browse import file_key
from luna_core.containers.probe import ProbeLimits
from luna_core.files import write_atomically
from luna_core.images import read_picture

SIDE = 256  # the longest side of a thumbnail, in pixels
# one decode at a time per process: a page of 40 cards must not spike memory
_making = threading.Lock()


def thumbnail(cache_dir: Path, path: Path, limits: ProbeLimits = ProbeLimits()) -> Path:
    """The cached JPEG thumbnail of the library file at `path` (a real path, checked by the
    caller)."""
    name = hashlib.sha256(f"{file_key(path)}|{SIDE}".encode()).hexdigest()
    target = cache_dir / name[:2] / f"{name}.jpg"
    if target.exists():
        return target
    with _making:
        if target.exists():
            return target
        picture = read_picture(path, limits).convert("RGB")
        picture.thumbnail((SIDE, SIDE))
        write_atomically(target, lambda tmp: picture.save(tmp, "JPEG", quality=82))
    return target
