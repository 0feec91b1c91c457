"""What the nodes keep across executions, per Luna home: its query service (encoders, index and
projector loaded once, swapped when a new version appears) and its refiner (the sampler loaded
once). ComfyUI runs nodes on one thread at a time, but a lock costs nothing and keeps it safe."""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

from luna_core.home.home import LunaHome

T = TypeVar("T")
_kept: dict[tuple, object] = {}
_lock = threading.Lock()


def home_root(home: str) -> str:
    """The home a node names (empty: $LUNA_HOME, else ./luna_home), as a key."""
    return str(LunaHome.resolve(home or None).root)


def kept(key: tuple, make: Callable[[], T]) -> T:
    """The object kept under `key`, made on first use."""
    with _lock:
        if key not in _kept:
            _kept[key] = make()
        return _kept[key]  # type: ignore[return-value]
