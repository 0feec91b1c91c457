"""Where each tile and crop sits: the chess grid, the detailer's padded boxes, and feathered masks.

Plain arithmetic on pixel rectangles, no model inside. Sizes are rounded to the model's pixel
multiple (the VAE's 8 pixels per latent times the UNet's own downsampling), so every tile of a
grid has the same size and all of them go through the sampler together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from luna_core.ask.boxes import Box
from luna_core.errors import LunaConfigError

DEFAULT_GRID = 5
# each tile is this much larger than the grid's cell: 5 x 5 on 4096² gives 1024² tiles
DEFAULT_OVERLAP = 0.25
DEFAULT_MARGIN = 0.25  # the detailer's context around a box, as a share of the box's longer side


class RefineInputError(LunaConfigError):
    """A grid, box or image size that cannot be refined as asked."""


@dataclass(frozen=True)
class Tile:
    """One region to refine: `rect` is cut from the image; `parity` is its chess colour (0 even,
    1 odd)."""

    index: int
    rect: Box
    parity: int = 0
    row: int = 0
    col: int = 0


def round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def chess_tiles(
    width: int,
    height: int,
    grid: int = DEFAULT_GRID,
    overlap: float = DEFAULT_OVERLAP,
    multiple: int = 8,
) -> list[Tile]:
    """A grid x grid chessboard of equal tiles covering the image, neighbours overlapping by
    `overlap` of a cell. Even cells ((row + col) % 2 == 0) are refined in the first pass, odd
    ones in the second."""
    if grid < 1:
        raise RefineInputError(f"grid must be at least 1 (got {grid})")
    if not 0 <= overlap < 1:
        raise RefineInputError(f"overlap must be within [0, 1) (got {overlap})")
    tile_w = min(
        round_to(width / grid * (1 + overlap) if grid > 1 else width, multiple),
        width // multiple * multiple,
    )
    tile_h = min(
        round_to(height / grid * (1 + overlap) if grid > 1 else height, multiple),
        height // multiple * multiple,
    )
    if tile_w < multiple or tile_h < multiple:
        raise RefineInputError(
            f"a {width}x{height} image is smaller than one {multiple}-pixel tile"
        )
    if grid > 1 and (tile_w * grid < width or tile_h * grid < height):
        raise RefineInputError(
            f"a {grid}x{grid} grid of {tile_w}x{tile_h} tiles cannot cover {width}x{height}"
        )
    xs = _spread(width, tile_w, grid)
    ys = _spread(height, tile_h, grid)
    tiles = []
    for row, y in enumerate(ys):
        for col, x in enumerate(xs):
            tiles.append(Tile(len(tiles), Box(x, y, tile_w, tile_h), (row + col) % 2, row, col))
    return tiles


def _spread(extent: int, size: int, count: int) -> list[int]:
    """`count` starts from 0 to extent - size, evenly spaced (the last tile ends at the edge)."""
    if count == 1:
        return [max(0, (extent - size) // 2)]
    return [int(round(i * (extent - size) / (count - 1))) for i in range(count)]


def detail_crops(
    width: int, height: int, boxes: list[Box], margin: float = DEFAULT_MARGIN
) -> list[Tile]:
    """Each box grown by its context margin into a square (as far as the image allows), clipped
    to it."""
    if not boxes:
        raise RefineInputError("the detailer needs at least one box")
    crops = []
    for index, box in enumerate(boxes):
        box.check_within(width, height)
        longer = max(box.width, box.height)
        side = longer + 2 * int(math.ceil(margin * longer))
        cx, cy = box.x + box.width / 2, box.y + box.height / 2
        w, h = min(side, width), min(side, height)
        x = int(round(min(max(cx - w / 2, 0), width - w)))
        y = int(round(min(max(cy - h / 2, 0), height - h)))
        crops.append(Tile(index, Box(x, y, w, h)))
    return crops


def feather_mask(width: int, height: int, feather: tuple[int, int, int, int]) -> np.ndarray:
    """[height, width] float32 weights: 1 inside, falling linearly to 0 over `feather` pixels on
    each side (left, top, right, bottom); a side with 0 (the image's border) is not faded."""
    left, top, right, bottom = feather

    def ramp(n: int, lo: int, hi: int) -> np.ndarray:
        position = np.arange(n, dtype=np.float32) + 0.5
        up = np.clip(position / lo, 0, 1) if lo > 0 else np.ones(n, np.float32)
        down = np.clip((n - position) / hi, 0, 1) if hi > 0 else np.ones(n, np.float32)
        return np.minimum(up, down)

    return np.outer(ramp(height, top, bottom), ramp(width, left, right)).astype(np.float32)


def tile_feather(
    tile: Tile, tiles: list[Tile], image_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """How far a chess tile fades on each side: the overlap with its neighbour there, 0 at the
    border."""
    width, height = image_size
    r = tile.rect
    overlaps = [0, 0, 0, 0]
    for other in tiles:
        o = other.rect
        if other.row == tile.row and other.col == tile.col - 1:
            overlaps[0] = max(0, o.x + o.width - r.x)
        if other.col == tile.col and other.row == tile.row - 1:
            overlaps[1] = max(0, o.y + o.height - r.y)
        if other.row == tile.row and other.col == tile.col + 1:
            overlaps[2] = max(0, r.x + r.width - o.x)
        if other.col == tile.col and other.row == tile.row + 1:
            overlaps[3] = max(0, r.y + r.height - o.y)
    if r.x == 0:
        overlaps[0] = 0
    if r.y == 0:
        overlaps[1] = 0
    if r.x + r.width >= width:
        overlaps[2] = 0
    if r.y + r.height >= height:
        overlaps[3] = 0
    return tuple(overlaps)


def crop_feather(crop: Tile, box: Box, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A detailer crop fades over its context margin (never into the box itself), not at the
    border."""
    width, height = image_size
    r = crop.rect
    left = 0 if r.x == 0 else box.x - r.x
    top = 0 if r.y == 0 else box.y - r.y
    right = 0 if r.x + r.width >= width else r.x + r.width - (box.x + box.width)
    bottom = 0 if r.y + r.height >= height else r.y + r.height - (box.y + box.height)
    return max(0, left), max(0, top), max(0, right), max(0, bottom)


def soft_mask(mask: np.ndarray, rect: Box, box: Box) -> np.ndarray:
    """A detection's [H, W] bool mask over the image, cut to `rect` and feathered over a few pixels
    (a 32nd of the box's shorter side, at least one), as float32 weights in [0, 1]."""
    cut = mask[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
    radius = max(1, min(box.width, box.height) // 32)
    blurred = Image.fromarray(cut.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float32) / 255.0
