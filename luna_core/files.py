"""Writing a file a person asked for: to a temporary name beside it, then one rename."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

from luna_core.errors import LunaConfigError


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary file beside `path`, which is then renamed onto it: a failed or
    interrupted write leaves no half file behind. A folder or an unwritable place is a clear
    error."""
    path = Path(path)
    if path.is_dir():
        raise LunaConfigError(f"output {path} is a folder: give a file name inside it")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.open(
            "wb"
        ).close()  # a place that takes no files (/proc, a read-only mount) fails here, clearly
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise LunaConfigError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path
