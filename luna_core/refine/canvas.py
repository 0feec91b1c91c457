"""The float canvas a refinement paints on: an item's pixels cropped out, its refined pixels
resized and pasted back through its feathered mask, and the finished picture."""

from __future__ import annotations

import numpy as np
from PIL import Image

from luna_core.ask.boxes import Box


def crop_pixels(canvas: np.ndarray, rect: Box) -> np.ndarray:
    return (
        np.clip(canvas[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width], 0, 255)
        .round()
        .astype(np.uint8)
    )


def paste_pixels(canvas: np.ndarray, rect: Box, pixels: np.ndarray, mask: np.ndarray) -> None:
    region = canvas[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]
    region += (pixels - region) * mask[..., None]


def resize_pixels(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None]
    resized = torch.nn.functional.interpolate(
        tensor, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )
    return resized[0].permute(1, 2, 0).numpy()


def to_picture(canvas: np.ndarray):
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
