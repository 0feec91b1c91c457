"""Regeneration quality: a fixed sample of test images refined by the chess refiner with each
source's conditioning (same seeds, same strength), scored by CLIP-I, with a contact sheet.

CLIP-I is the cosine of the vision encoder's embeddings of the result and the original. CLIP-T
(to the true prompt's pooled text embedding) needs an image tower and a text tower trained
together: the trained tiny world's are (its vision tower learned SDXL's pooled space); the real
profile's vision encoder and SDXL's text encoders are different CLIP models, so there CLIP-T is
reported as not comparable rather than computed across unrelated spaces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from luna_core.refine.options import RefineSettings, SamplerSettings
from luna_core.refine.refiner import Refiner
from luna_core.refine.sampler import ItemConditioning

COLUMNS = ("original", "true prompt", "vault", "projector", "mean", "empty")
CLIP_T_NOTE = (
    "not comparable: the vision encoder and SDXL's text encoders are different CLIP models, "
    "so image and text embeddings do not share a space"
)


@dataclass(frozen=True)
class QualitySettings:
    images: int = 16  # test images refined per source (enough for an interval)
    grid: int = 3
    strength: float = 0.35
    steps: int = 12
    seed: int = 0
    guidance: float = 5.0
    # Regenerate at the UNet's native size (the picture resized to about native² pixels) rather
    # than at the picture's own size: what the conditioning alone can rebuild, at a strength that
    # leaves it work.
    native_size: bool = False


@dataclass
class QualityResult:
    clip_i: dict[str, list[float]] = field(default_factory=dict)  # source -> per sample image
    sample_paths: list[str] = field(default_factory=list)
    sheet: object = None  # PIL image: rows of original | sources
    # source -> per sample image, where comparable
    clip_t: dict[str, list[float]] | str = CLIP_T_NOTE


class _Fixed:
    """A conditioner that gives every tile of an image the same (whole-image) conditioning."""

    def __init__(self, condition: ItemConditioning):
        self.item = condition

    def condition(
        self, crops: list, **_options
    ) -> list[ItemConditioning]:  # the report asks for no pieces or LoRAs
        return [self.item] * len(crops)


class _Excluding:
    """A conditioner whose vault answers leave the image being refined (and its near-duplicates)
    out."""

    def __init__(self, conditioner, exclude: frozenset[int]):
        self.conditioner, self.exclude = conditioner, exclude

    def condition(self, crops: list, **options) -> list[ItemConditioning]:
        return self.conditioner.condition(crops, self.exclude, **options)


def refine_sample(
    refiner: Refiner,
    images: list,
    left_out: list[frozenset[int]],
    whole_image: dict[str, list[ItemConditioning]],
    per_tile: dict[str, object],
    settings: QualitySettings,
    shared_space: bool = False,
) -> QualityResult:
    """`whole_image`: source -> one conditioning per sample image (true prompt, mean, empty);
    `per_tile`: source -> a conditioner answering each tile (vault, projector), as `luna refine`
    does, with `left_out[i]` (sample image i and its near-duplicates) left out of vault answers."""
    refine = RefineSettings(
        grid=settings.grid,
        sampler=SamplerSettings(
            strength=settings.strength,
            steps=settings.steps,
            seed=settings.seed,
            guidance_scale=settings.guidance,
        ),
    )
    result = QualityResult(
        clip_t={} if shared_space and "true prompt" in whole_image else CLIP_T_NOTE
    )
    shared_space = isinstance(result.clip_t, dict)
    rows = []
    own_conditioner = refiner.conditioner
    if settings.native_size:
        images = [
            at_native_size(image, refiner.sampler.native_size, refiner.sampler.pixel_multiple)
            for image in images
        ]
    originals = refiner.vault.embed_pictures(images, use_index=False)
    try:
        outputs: dict[str, list] = {name: [] for name in COLUMNS[1:]}
        for i, image in enumerate(images):
            for name in COLUMNS[1:]:
                if name in whole_image:
                    refiner.conditioner = _Fixed(whole_image[name][i])
                elif name in per_tile:
                    refiner.conditioner = _Excluding(per_tile[name], left_out[i])
                else:
                    continue
                refined, _ = refiner.chess(image, refine)
                outputs[name].append(refined)
        for name, refined in outputs.items():
            if refined:
                embeds = refiner.vault.embed_pictures(refined, use_index=False)
                result.clip_i[name] = [_cosine(a, b) for a, b in zip(embeds, originals)]
                if shared_space:
                    truth = [c.pooled_prompt_embeds for c in whole_image["true prompt"]]
                    result.clip_t[name] = [_cosine(a, b) for a, b in zip(embeds, truth)]
        for i, image in enumerate(images):
            rows.append(
                [image] + [outputs[name][i] if outputs[name] else None for name in COLUMNS[1:]]
            )
    finally:
        refiner.conditioner = own_conditioner
    result.sheet = contact_sheet(rows)
    return result


def at_native_size(image, native: int, multiple: int):
    """The picture scaled to about native x native pixels (its aspect kept), sides a multiple of
    `multiple`."""
    scale = native / (image.width * image.height) ** 0.5
    width = max(multiple, round(image.width * scale / multiple) * multiple)
    height = max(multiple, round(image.height * scale / multiple) * multiple)
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def _cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def contact_sheet(rows: list[list], cell: int = 160):
    """A grid of thumbnails with the column names on top: original | true prompt | vault |
    projector | mean | empty."""

    header = 18
    sheet = Image.new(
        "RGB", (cell * len(COLUMNS), header + cell * max(1, len(rows))), (255, 255, 255)
    )
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(COLUMNS):
        draw.text((column * cell + 4, 3), name, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for column, image in enumerate(row):
            if image is None:
                continue
            thumb = image.convert("RGB").resize((cell, cell))
            sheet.paste(thumb, (column * cell, header + r * cell))
    return sheet
