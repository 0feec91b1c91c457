"""Prompts and the pictures drawn from them: similar prompts give similar images.

A prompt names a subject (a shape), a colour (its fill), a background (the backdrop's colour and
pattern) and style tags. The seed moves and scales the subject, as a sampler's seed changes a
composition while the prompt keeps its content.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUBJECTS = ("cat", "house", "tree", "car", "fish", "flower", "mountain", "robot", "bird", "boat")
COLOURS = {
    "red": (200, 40, 40),
    "orange": (235, 140, 30),
    "yellow": (230, 210, 40),
    "green": (50, 160, 60),
    "blue": (40, 80, 200),
    "purple": (130, 50, 170),
    "pink": (230, 120, 170),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "brown": (120, 80, 40),
}
BACKGROUNDS = {
    "forest": ((30, 70, 35), "stripes"),
    "beach": ((230, 210, 160), "gradient"),
    "night sky": ((15, 15, 50), "dots"),
    "city street": ((110, 110, 120), "grid"),
    "snowy field": ((225, 230, 240), "dots"),
    "desert": ((215, 170, 100), "gradient"),
    "ocean": ((30, 90, 160), "waves"),
    "studio": ((200, 200, 200), "plain"),
}
STYLES = (
    "masterpiece, best quality",
    "photorealistic, 8k, sharp focus",
    "watercolor painting, soft light",
    "anime style, vibrant colors",
    "oil painting, impressionism",
    "cinematic lighting, depth of field",
)
NEGATIVES = (
    "blurry, lowres, bad anatomy",
    "worst quality, low quality, jpeg artifacts",
    "text, watermark, signature",
    "deformed, ugly, extra limbs",
    "",
)
# Tags that stretch a prompt past CLIP's 77-token window, as heavy users' prompts often are.
LONG_TAGS = (
    "intricate details",
    "highly detailed",
    "ultra sharp",
    "volumetric lighting",
    "global illumination",
    "ray tracing",
    "subsurface scattering",
    "award winning photograph",
    "trending on artstation",
    "octane render",
    "unreal engine 5",
    "hyperrealistic",
    "dramatic composition",
    "golden hour",
    "rim light",
    "bokeh",
    "film grain",
    "color graded",
    "wide angle lens",
    "35mm photograph",
    "kodak portra 400",
    "moody atmosphere",
    "epic scale",
    "studio quality",
    "professional photography",
    "symmetrical",
    "rule of thirds",
    "high dynamic range",
    "crisp edges",
    "fine textures",
)


# The style's first tag with more attention, as each writer's users type it (its own syntax).
EMPHASIS = {
    "a1111": lambda tag, weight: f"({tag}:{weight:g})",
    "comfy": lambda tag, weight: f"({tag}:{weight:g})",
    "compel": lambda tag, weight: f"({tag}){weight:g}",
    "novelai": lambda tag, weight: "{" + tag + "}",  # NovelAI's braces: x1.05 each
}


@dataclass(frozen=True)
class PromptSpec:
    subject: str
    colour: str
    background: str
    style: str
    negative: str
    long: bool = False
    # the weight of the style's first tag, written in the writer's syntax
    emphasis: float | None = None

    @property
    def prompt(self) -> str:
        return self.render("literal")

    def render(self, syntax: str) -> str:
        """The prompt as a user of a writer with this prompt syntax types it."""
        style = self.style
        if self.emphasis is not None and syntax in EMPHASIS:
            first, _, rest = style.partition(", ")
            style = EMPHASIS[syntax](first, self.emphasis) + (f", {rest}" if rest else "")
        text = f"a {self.colour} {self.subject} on a {self.background} background, {style}"
        if self.long:
            text += ", " + ", ".join(LONG_TAGS)
        return text


def random_prompt(
    rng: random.Random, long: bool = False, emphasis: float | None = None
) -> PromptSpec:
    return PromptSpec(
        subject=rng.choice(SUBJECTS),
        colour=rng.choice(list(COLOURS)),
        background=rng.choice(list(BACKGROUNDS)),
        style=rng.choice(STYLES),
        negative=rng.choice(NEGATIVES),
        long=long,
        emphasis=emphasis,
    )


def draw_picture(
    spec: PromptSpec, seed: int, size: tuple[int, int] = (256, 256), grain: float = 0.0
) -> Image.Image:
    """An RGB picture of the prompt: backdrop from the background, a coloured shape for the subject.

    `grain` (pixel noise, 0-255 scale) gives files the size and decode cost of real renders."""
    rng = random.Random(seed)
    width, height = size
    base, pattern = BACKGROUNDS[spec.background]
    image = Image.new("RGB", size, base)
    draw = ImageDraw.Draw(image)
    shade = tuple(min(255, c + 40) for c in base)
    if pattern == "stripes":
        for x in range(0, width, max(4, width // 12)):
            draw.rectangle([x, 0, x + width // 40, height], fill=shade)
    elif pattern == "gradient":
        for y in range(height):
            t = y / max(1, height - 1)
            draw.line([0, y, width, y], fill=tuple(int(c * (1 - 0.4 * t)) for c in base))
    elif pattern == "dots":
        for _ in range(60):
            x, y = rng.randrange(width), rng.randrange(height)
            r = max(1, width // 128)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=shade)
    elif pattern == "grid":
        step = max(8, width // 8)
        for x in range(0, width, step):
            draw.line([x, 0, x, height], fill=shade, width=2)
        for y in range(0, height, step):
            draw.line([0, y, width, y], fill=shade, width=2)
    elif pattern == "waves":
        step = max(6, height // 10)
        for y in range(step, height, step):
            draw.arc([0, y - step, width, y + step], 200, 340, fill=shade, width=3)

    colour = COLOURS[spec.colour]
    dark = tuple(int(c * 0.6) for c in colour)
    scale = rng.uniform(0.28, 0.42) * min(width, height)
    cx = width / 2 + rng.uniform(-0.15, 0.15) * width
    cy = height / 2 + rng.uniform(-0.12, 0.12) * height
    s = scale
    shape = spec.subject
    if shape == "cat":
        draw.ellipse([cx - s * 0.6, cy - s * 0.5, cx + s * 0.6, cy + s * 0.6], fill=colour)
        draw.polygon(
            [
                (cx - s * 0.55, cy - s * 0.2),
                (cx - s * 0.45, cy - s * 0.85),
                (cx - s * 0.1, cy - s * 0.45),
            ],
            fill=colour,
        )
        draw.polygon(
            [
                (cx + s * 0.55, cy - s * 0.2),
                (cx + s * 0.45, cy - s * 0.85),
                (cx + s * 0.1, cy - s * 0.45),
            ],
            fill=colour,
        )
    elif shape == "house":
        draw.rectangle([cx - s * 0.6, cy - s * 0.1, cx + s * 0.6, cy + s * 0.7], fill=colour)
        draw.polygon(
            [(cx - s * 0.75, cy - s * 0.1), (cx, cy - s * 0.8), (cx + s * 0.75, cy - s * 0.1)],
            fill=dark,
        )
    elif shape == "tree":
        draw.rectangle([cx - s * 0.1, cy + s * 0.2, cx + s * 0.1, cy + s * 0.8], fill=(100, 60, 30))
        draw.polygon(
            [(cx - s * 0.6, cy + s * 0.3), (cx, cy - s * 0.9), (cx + s * 0.6, cy + s * 0.3)],
            fill=colour,
        )
    elif shape == "car":
        draw.rectangle([cx - s * 0.8, cy - s * 0.1, cx + s * 0.8, cy + s * 0.35], fill=colour)
        draw.rectangle([cx - s * 0.4, cy - s * 0.45, cx + s * 0.4, cy - s * 0.1], fill=dark)
        for wx in (-0.5, 0.5):
            draw.ellipse(
                [cx + s * wx - s * 0.18, cy + s * 0.2, cx + s * wx + s * 0.18, cy + s * 0.55],
                fill=(20, 20, 20),
            )
    elif shape == "fish":
        draw.ellipse([cx - s * 0.7, cy - s * 0.35, cx + s * 0.4, cy + s * 0.35], fill=colour)
        draw.polygon(
            [(cx + s * 0.3, cy), (cx + s * 0.8, cy - s * 0.35), (cx + s * 0.8, cy + s * 0.35)],
            fill=dark,
        )
    elif shape == "flower":
        for dx, dy in ((0, -0.4), (0.4, 0), (0, 0.4), (-0.4, 0)):
            px, py = cx + s * dx, cy + s * dy
            draw.ellipse([px - s * 0.3, py - s * 0.3, px + s * 0.3, py + s * 0.3], fill=colour)
        draw.ellipse([cx - s * 0.2, cy - s * 0.2, cx + s * 0.2, cy + s * 0.2], fill=(240, 200, 40))
    elif shape == "mountain":
        draw.polygon(
            [(cx - s, cy + s * 0.6), (cx - s * 0.2, cy - s * 0.7), (cx + s * 0.5, cy + s * 0.6)],
            fill=colour,
        )
        draw.polygon(
            [(cx - s * 0.2, cy + s * 0.6), (cx + s * 0.5, cy - s * 0.4), (cx + s, cy + s * 0.6)],
            fill=dark,
        )
    elif shape == "robot":
        draw.rectangle([cx - s * 0.4, cy - s * 0.2, cx + s * 0.4, cy + s * 0.7], fill=colour)
        draw.rectangle([cx - s * 0.3, cy - s * 0.7, cx + s * 0.3, cy - s * 0.25], fill=dark)
    elif shape == "bird":
        draw.ellipse([cx - s * 0.5, cy - s * 0.3, cx + s * 0.5, cy + s * 0.3], fill=colour)
        draw.polygon(
            [(cx - s * 0.1, cy), (cx - s * 0.6, cy - s * 0.7), (cx + s * 0.2, cy - s * 0.1)],
            fill=dark,
        )
    else:  # boat
        draw.polygon(
            [
                (cx - s * 0.8, cy + s * 0.1),
                (cx + s * 0.8, cy + s * 0.1),
                (cx + s * 0.5, cy + s * 0.5),
                (cx - s * 0.5, cy + s * 0.5),
            ],
            fill=colour,
        )
        draw.polygon(
            [(cx, cy - s * 0.8), (cx, cy + s * 0.05), (cx + s * 0.5, cy + s * 0.05)], fill=dark
        )
    if grain > 0:
        noise = np.random.default_rng(seed).normal(0.0, grain, (height, width, 3))
        pixels = np.asarray(image, dtype=np.float32) + noise
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image
