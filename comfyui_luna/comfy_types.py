"""ComfyUI's IMAGE and MASK types as Luna reads them: RGB pictures, and the box around each mask."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_pictures(image) -> list:
    """ComfyUI IMAGE [B, H, W, C] float in [0, 1] → B RGB PIL pictures."""

    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"IMAGE must be [B, H, W, C] with C in 1, 3, 4; got {list(array.shape)}")
    pixels = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return [
        Image.fromarray(p[..., :3] if p.shape[-1] != 1 else p[..., 0]).convert("RGB")
        for p in pixels
    ]


def png_bytes(picture) -> bytes:
    """A PIL picture as PNG bytes, as `luna serve` takes it."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def mask_boxes(mask, count: int, width: int, height: int) -> list[str | None]:
    """For each batch item, the X,Y,W,H box around its mask (> 0.5), or None (the whole picture)."""
    if mask is None:
        return [None] * count
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if array.ndim == 2:
        array = array[None]
    boxes = []
    for i in range(count):
        m = array[min(i, len(array) - 1)]
        if m.shape != (height, width):
            raise ValueError(f"MASK {list(m.shape)} does not match the IMAGE's {height}x{width}")
        ys, xs = np.nonzero(m > 0.5)
        boxes.append(
            None
            if len(xs) == 0
            else f"{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}"
        )
    return boxes
