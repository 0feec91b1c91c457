"""Model references (a hub id or a local folder), checked before any work."""

from __future__ import annotations

import os
from pathlib import Path

from luna_core.errors import LunaConfigError


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or os.path.exists(model)


def check_model_reference(model: str, what: str) -> None:
    """A local path that does not exist is a clear error before any work (hub ids are checked on
    load)."""
    if _looks_like_path(model) and not Path(model).expanduser().exists():
        raise LunaConfigError(f"the configured {what} '{model}' does not exist")
