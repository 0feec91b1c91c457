"""The one box type: a rectangle of whole pixels (X,Y,W,H from the image's top-left corner), the one
parser of its text form, and boxes files. The CLI, `luna serve`, the ComfyUI nodes, the refiners and
the Dagster launchpad all read boxes here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from luna_core.errors import QueryError

MAX_BOXES_FILE_BYTES = 1 << 20
MAX_BOXES_IN_FILE = 10_000


class BoxError(QueryError):
    """A box that is not X,Y,W,H in whole pixels, is empty, or lies outside its image."""


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    @classmethod
    def parse(cls, text: str) -> Box:
        """'X,Y,W,H' in whole pixels, e.g. '120,40,256,256'."""
        try:
            x, y, w, h = (int(part) for part in str(text).split(","))
        except ValueError:
            raise BoxError(
                f"box {text!r} is not X,Y,W,H in whole pixels (e.g. 120,40,256,256)"
            ) from None
        return cls(x, y, w, h)

    @property
    def edges(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom), as PIL crops take it."""
        return self.x, self.y, self.x + self.width, self.y + self.height

    def check_within(self, width: int, height: int, name: str = "") -> None:
        """A box must hold pixels and lie inside its `width` x `height` image (named `name` in
        the error)."""
        if self.width <= 0 or self.height <= 0:
            raise BoxError(f"box {self} is empty")
        if self.x < 0 or self.y < 0 or self.x + self.width > width or self.y + self.height > height:
            raise BoxError(
                f"box {self} lies outside the {width}x{height} image{' ' + name if name else ''}"
            )

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.width},{self.height}"


def load_boxes(path: str | Path) -> list[Box]:
    """Boxes from a JSON file: a list (or {"boxes": [...]}) of [x, y, w, h], of "x,y,w,h", or of
    {"x":…, "y":…, "w"|"width":…, "h"|"height":…}; bounded in size and count."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = json.loads(handle.read(MAX_BOXES_FILE_BYTES).decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise BoxError(f"boxes file {path} cannot be read as JSON ({exc})") from None
    items = data.get("boxes") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise BoxError(f"boxes file {path} holds no list of boxes")
    boxes = []
    for item in items[:MAX_BOXES_IN_FILE]:
        if isinstance(item, str):
            boxes.append(Box.parse(item))
        elif isinstance(item, (list, tuple)) and len(item) == 4:
            boxes.append(Box.parse(",".join(str(v) for v in item)))
        elif isinstance(item, dict) and {"x", "y"} <= item.keys():
            w, h = item.get("w", item.get("width")), item.get("h", item.get("height"))
            boxes.append(Box.parse(f"{item['x']},{item['y']},{w},{h}"))
        else:
            raise BoxError(f"boxes file {path}: {item!r} is not a box")
    return boxes
