"""Detections from any detector, for the detailer: a box, a mask over the whole image, and
optionally a label and a prompt piece per detection.

Formats (chosen by what the path is):
- COCO JSON (`.json`): `bbox` [x, y, w, h], and `segmentation` as polygons or RLE (counts as a
  list, or COCO's compressed string); the image is picked by file name when the file covers
  several. Labels come from `categories`; a `prompt` field on an annotation is its prompt piece,
  a `loras` field its LoRAs (`[{"name": "detail_tweaker_xl", "weight": 0.8}]` or
  `["detail_tweaker_xl:0.8"]`).
- YOLO txt (`.txt`): `class cx cy w h` normalized to [0, 1] (boxes), or `class x1 y1 x2 y2 …`
  (YOLO-seg polygons); class names from a `classes.txt` beside it, else the class number.
- A label-mask PNG (`.png`): every non-zero value is a label; each connected component of it is one
  detection.
- A mask folder: one image per detection, non-zero pixels inside; the file's stem is its label.

Every detection is checked against the image: a box outside it or an empty mask is an error
naming the file and the detection. Files are read with bounds (size, count): they are data from
elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from luna_core.ask.boxes import Box, BoxError
from luna_core.errors import LunaConfigError, QueryError
from luna_core.metadata.record import Lora
from luna_core.refine.lora_files import lora_set

MAX_DETECTIONS_FILE_BYTES = 64 << 20
MAX_DETECTIONS = 10_000
MASK_SUFFIXES = (".png", ".webp", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg")


class DetectionsError(QueryError):
    """A detections file that cannot be read, or a detection that does not fit its image."""


@dataclass(frozen=True)
class Detection:
    box: Box
    mask: np.ndarray  # [H, W] bool over the whole image: what is pasted back
    label: str | None = None
    prompt: str | None = None  # a prompt piece, mixed into this detection's conditioning
    loras: tuple[Lora, ...] = ()  # LoRAs this detection's crop gets on top of the run's own


def read_detections(
    path: str | Path, size: tuple[int, int], image_name: str | None = None
) -> list[Detection]:
    """The detections in `path` for an image of `size` (width, height) named `image_name` (COCO
    files covering several images pick it by file name)."""
    path = Path(path)
    if path.is_dir():
        found = _mask_folder(path, size)
    elif not path.is_file():
        raise DetectionsError(f"no detections file at {path}")
    elif path.suffix.lower() == ".json":
        found = _coco(path, size, image_name)
    elif path.suffix.lower() == ".txt":
        found = _yolo(path, size)
    elif path.suffix.lower() in MASK_SUFFIXES:
        found = _label_mask(path, size)
    else:
        raise DetectionsError(
            f"{path}: not a detections file (COCO .json, YOLO .txt, a label-mask image or a "
            "folder of masks)"
        )
    if not found:
        raise DetectionsError(f"{path} holds no detection for this image")
    if len(found) > MAX_DETECTIONS:
        raise DetectionsError(f"{path} holds {len(found)} detections (at most {MAX_DETECTIONS})")
    return found


def _detection(
    path: Path,
    index: int,
    mask: np.ndarray,
    box: Box | None = None,
    label=None,
    prompt=None,
    loras=None,
) -> Detection:
    """A detection whose box is `box` (else the mask's bounds), checked against the image."""
    height, width = mask.shape
    if not mask.any():
        raise DetectionsError(f"{path}: detection {index}{_named(label)} has an empty mask")
    if box is None:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = Box(
            int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
        )
    try:
        box.check_within(width, height)
    except BoxError as exc:
        raise DetectionsError(f"{path}: detection {index}{_named(label)}: {exc}") from None
    try:
        chosen = lora_set([loras] if isinstance(loras, str | dict) else loras or [])
    except LunaConfigError as exc:
        raise DetectionsError(f"{path}: detection {index}{_named(label)}: {exc}") from None
    return Detection(
        box,
        mask,
        None if label is None else str(label),
        None if prompt is None else str(prompt),
        chosen,
    )


def _named(label) -> str:
    return f" ({label})" if label is not None else ""


def _read_bounded(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_DETECTIONS_FILE_BYTES + 1)
    except OSError as exc:
        raise DetectionsError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_DETECTIONS_FILE_BYTES:
        raise DetectionsError(f"{path} is larger than {MAX_DETECTIONS_FILE_BYTES >> 20} MiB")
    return data


def _box_mask(box: Box, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    mask = np.zeros((height, width), bool)
    mask[max(0, box.y) : max(0, box.y + box.height), max(0, box.x) : max(0, box.x + box.width)] = (
        True
    )
    return mask


def _polygons_mask(polygons: list[list[float]], size: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("1", size, 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [(float(polygon[i]), float(polygon[i + 1])) for i in range(0, len(polygon) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def rle_counts(text: str) -> list[int]:
    """COCO's compressed RLE string → run lengths (the counts are deltas after the second, five
    bits a character from '0' (48) up, the sixth bit saying more follows, the last bit of a run
    its sign)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("compressed RLE ends inside a number")
            char = ord(text[position]) - 48
            if not 0 <= char < 64:
                raise ValueError(f"byte {text[position]!r} is not compressed RLE")
            value |= (char & 0x1F) << (5 * shift)
            more = bool(char & 0x20)
            position += 1
            shift += 1
            if not more and char & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def _rle_mask(rle: dict, size: tuple[int, int]) -> np.ndarray:
    height, width = (int(v) for v in rle["size"])
    if (width, height) != tuple(size):
        raise ValueError(f"its mask is {width}x{height}, the image {size[0]}x{size[1]}")
    counts = rle["counts"]
    counts = rle_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != width * height:
        raise ValueError("its RLE counts do not cover the image")
    flat = np.zeros(width * height, bool)
    position = 0
    for run, count in enumerate(counts):  # runs alternate, background first, in column-major order
        if run % 2:
            flat[position : position + count] = True
        position += count
    return flat.reshape(width, height).T


def _coco(path: Path, size: tuple[int, int], image_name: str | None) -> list[Detection]:
    try:
        data = json.loads(_read_bounded(path).decode("utf-8"))
        images = {int(i["id"]): i for i in data.get("images", [])}
        categories = {int(c["id"]): c.get("name") for c in data.get("categories", [])}
        annotations = list(data["annotations"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DetectionsError(f"{path}: not COCO detections JSON ({exc})") from None
    wanted = None
    if len(images) > 1:
        named = [
            i
            for i, image in images.items()
            if image_name and Path(str(image.get("file_name", ""))).name == Path(image_name).name
        ]
        if len(named) != 1:
            raise DetectionsError(
                f"{path} covers {len(images)} images and none is named {image_name!r}"
            )
        wanted = named[0]
    out = []
    for index, annotation in enumerate(annotations):
        try:
            if wanted is not None and int(annotation.get("image_id", -1)) != wanted:
                continue
            label = (
                categories.get(int(annotation["category_id"]))
                if "category_id" in annotation
                else None
            )
            segmentation = annotation.get("segmentation")
            box = None
            if isinstance(segmentation, dict):
                mask = _rle_mask(segmentation, size)
            elif isinstance(segmentation, list) and segmentation:
                mask = _polygons_mask(segmentation, size)
            else:
                x, y, w, h = (float(v) for v in annotation["bbox"])
                box = Box(
                    int(np.floor(x)),
                    int(np.floor(y)),
                    int(np.ceil(x + w) - np.floor(x)),
                    int(np.ceil(y + h) - np.floor(y)),
                )
                mask = _box_mask(box, size)
        except (ValueError, KeyError, TypeError) as exc:
            raise DetectionsError(f"{path}: annotation {index} cannot be read ({exc})") from None
        out.append(
            _detection(
                path, index, mask, box, label, annotation.get("prompt"), annotation.get("loras")
            )
        )
    return out


def _yolo(path: Path, size: tuple[int, int]) -> list[Detection]:
    width, height = size
    classes_file = path.parent / "classes.txt"
    names = (
        _read_bounded(classes_file).decode("utf-8").splitlines()
        if classes_file.is_file() and classes_file != path
        else []
    )
    out = []
    for number, line in enumerate(
        _read_bounded(path).decode("utf-8", "replace").splitlines(), start=1
    ):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            fields = line.split()
            klass, values = int(fields[0]), [float(v) for v in fields[1:]]
            if any(not 0.0 <= v <= 1.0 for v in values):
                raise ValueError("coordinates are not normalized to [0, 1]")
            if len(values) == 4:
                cx, cy, w, h = values
                left, top = int(round((cx - w / 2) * width)), int(round((cy - h / 2) * height))
                box = Box(
                    left,
                    top,
                    int(round((cx + w / 2) * width)) - left,
                    int(round((cy + h / 2) * height)) - top,
                )
                mask = _box_mask(box, size)
            elif len(values) >= 6 and len(values) % 2 == 0:
                box = None
                mask = _polygons_mask(
                    [[v * (width if i % 2 == 0 else height) for i, v in enumerate(values)]], size
                )
            else:
                raise ValueError("expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 …'")
        except (ValueError, IndexError) as exc:
            raise DetectionsError(f"{path}: line {number} cannot be read ({exc})") from None
        label = names[klass] if 0 <= klass < len(names) else str(klass)
        out.append(_detection(path, number, mask, box, label))
    return out


def _open_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.size != tuple(size):
                raise DetectionsError(
                    f"{path}: the mask is {image.width}x{image.height}, the image "
                    f"{size[0]}x{size[1]}"
                )
            return np.asarray(
                image.convert("I") if image.mode not in ("L", "P", "1", "I") else image
            )
    except (OSError, Image.DecompressionBombError) as exc:
        raise DetectionsError(f"{path}: not a readable mask image ({exc})") from None


def _label_mask(path: Path, size: tuple[int, int]) -> list[Detection]:
    labels = _open_mask(path, size)
    out = []
    for value in sorted(int(v) for v in np.unique(labels) if v != 0):
        components, count = ndimage.label(labels == value)
        for component in range(1, count + 1):
            out.append(_detection(path, len(out), components == component, label=str(value)))
    return out


def _mask_folder(path: Path, size: tuple[int, int]) -> list[Detection]:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in MASK_SUFFIXES)
    if len(files) > MAX_DETECTIONS:
        raise DetectionsError(f"{path} holds {len(files)} masks (at most {MAX_DETECTIONS})")
    return [_detection(file, 0, _open_mask(file, size) != 0, label=file.stem) for file in files]
