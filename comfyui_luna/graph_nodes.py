"""Luna Chess Refiner and Luna Semantic Detailer: refinement on the graph's own MODEL, VAE and CLIP
(its checkpoint, LoRA loaders and VAE all play their part), every tile or crop of a pass in one
ComfyUI sampler call, each with its own conditioning from the vault in the checkpoint's dialect.
Their options are luna_core.refine.options.RefineOptions, declared once, but for those OMITTED."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from comfyui_luna.graph_answers import Answers
from comfyui_luna.graph_conditioning import batch_conditioning
from comfyui_luna.graph_sampling import PassSettings, batch_noise_note, check_sdxl, refine_pass
from comfyui_luna.inputs import HOME_INPUT, option_inputs, read_inputs
from comfyui_luna.refine_nodes import ImageAndReport
from luna_core.ask.boxes import Box
from luna_core.errors import QueryError
from luna_core.refine.geometry import (
    chess_tiles,
    crop_feather,
    detail_crops,
    feather_mask,
    soft_mask,
    tile_feather,
)
from luna_core.refine.options import RefineOptions

# What the graph refiners leave out of the refine options, and why.
OMITTED = {
    "prompt": "the typed prompt arrives encoded by the graph's CLIP: input `positive`",
    "negative_prompt": "the typed negative arrives encoded: input `negative`",
    "memory_budget_mb": "ComfyUI manages the memory: a call that runs out is split in two",
    "lora_from": "the graph's LoRA loaders patch MODEL and CLIP; per-item LoRAs: Luna Refine",
    "lora_cap": "goes with lora_from",
    "per_block": "a diffusers UNet feature of Luna Refine",
    "composition_blocks": "a diffusers UNet feature of Luna Refine",
    "sequential": "a comparison for benchmarks (one sampler call per item), not a way to refine",
    "tracking_uri": "the home's own registry answers; `projector` names the model in it",
    "ip_adapter": "an IP-Adapter belongs to the graph's own IPAdapter nodes in ComfyUI",
    "ip_weight": "goes with ip_adapter",
    "loras": "the graph's LoRA loaders patch MODEL and CLIP",
}
CHESS_OMITTED = {**OMITTED, "piece_mode": "the chess refiner's tiles have no prompt pieces"}
DETAIL_OMITTED = {**OMITTED, "grid": "the detailer refines its regions, not a grid"}
MAX_CROP = 4096


def _comfy_lists() -> tuple[list, list]:
    # comfy: present inside ComfyUI (and as the test double in Luna's tests)
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def _inputs(omit: dict, extra_required: dict) -> dict:
    samplers, schedulers = _comfy_lists()
    return {
        "required": {
            "image": ("IMAGE",),
            "model": ("MODEL",),
            "vae": ("VAE",),
            "clip": ("CLIP", {"tooltip": "encodes the neighbours' prompts: the model's dialect"}),
            **option_inputs(RefineOptions, omit, {}),
            "sampler_name": (samplers, {"default": "euler"}),
            "scheduler": (schedulers, {"default": "normal"}),
            **extra_required,
            "home": HOME_INPUT,
        },
        "optional": {
            "positive": ("CONDITIONING", {"tooltip": "typed prompt (sources prompt and blend)"}),
            "negative": ("CONDITIONING", {"tooltip": "typed negative (sources prompt and blend)"}),
            "server_url": (
                "STRING",
                {"default": "", "tooltip": "a running `luna serve` (empty: this process)"},
            ),
        },
    }


@dataclass
class _Run:
    """One node execution: its models, settings and report lines."""

    model: object
    vae: object
    answers: Answers
    settings: PassSettings
    seed: int
    positive: object
    negative: object
    calls: int = 0
    sampled_seconds: float = 0.0

    def item_seed(self, index: int) -> int:
        """Item i's noise seed: seed + i, within the 64 bits torch's generator takes."""
        return (self.seed + index) % 2**64

    def refine(self, pixels, sizes, seeds, pieces=None):
        items = self.answers.items(pixels, self.positive, self.negative, pieces)
        positive = batch_conditioning([i.tokens for i in items], [i.pooled for i in items])
        negative = batch_conditioning(
            [i.negative for i in items], [i.negative_pooled for i in items]
        )
        started = time.perf_counter()
        out = refine_pass(
            self.model, self.vae, pixels, positive, negative, sizes, seeds, self.settings
        )
        self.sampled_seconds += time.perf_counter() - started
        cap = self.settings.batch_cap
        self.calls += -(-len(seeds) // cap) if cap > 0 else 1
        return out

    def report(self, head: str) -> str:
        hits, encoded = self.answers.cache_use()
        lines = [
            head,
            f"sampler calls: {self.calls} ({self.sampled_seconds:.2f} s sampling); conditioning "
            f"{self.answers.seconds:.2f} s (prompts: {encoded} encoded by the graph's CLIP, {hits} "
            "from the cache)",
            *sorted(self.answers.notes),
        ]
        note = batch_noise_note(self.settings.sampler_name)
        return "\n".join(lines + ([note] if note else []))


def _start(node: str, model, clip, vae, values: dict, omit: dict) -> tuple:
    check_sdxl(model, node)
    image = values["image"]
    if image.ndim != 4:
        raise QueryError(f"{node}: IMAGE must be [B, H, W, C]; got {list(image.shape)}")
    options = read_inputs(RefineOptions, values, omit)
    settings = options.settings()
    source = options.source_settings() if options.source in ("vault", "projector") else None
    source = source or _typed_source(options)
    sampler = settings.sampler
    passes = PassSettings(
        sampler.steps,
        sampler.guidance_scale,
        values["sampler_name"],
        values["scheduler"],
        sampler.strength,
        sampler.batch_size,
    )
    answers = Answers(clip, source, values["home"], values.get("server_url") or "")
    run = _Run(
        model, vae, answers, passes, sampler.seed, values.get("positive"), values.get("negative")
    )
    return run, settings


def _typed_source(options: RefineOptions):
    # the typed prompt arrives as CONDITIONING: the text check of `luna refine` does not apply
    return replace(options, prompt="(CONDITIONING)").source_settings()


def _cut(canvas, rect: Box):
    return canvas[rect.y : rect.y + rect.height, rect.x : rect.x + rect.width]


def _paste(canvas, rect: Box, pixels, mask: np.ndarray) -> None:
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    region = _cut(canvas, rect)
    weight = torch.from_numpy(mask)[..., None].to(region.dtype)
    region += (pixels.to(region.dtype) - region) * weight


def _painted(image, paint):
    """Each picture of an IMAGE batch refined on its own canvas by `paint`, never mixed."""
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    out = []
    for picture in image[..., :3].float().cpu():
        canvas = picture.clone()
        paint(canvas)
        out.append(canvas)
    return torch.stack(out)


def _resized(pixels, width: int, height: int):
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    if pixels.shape[1:3] == (height, width):
        return pixels
    moved = torch.nn.functional.interpolate(
        pixels.permute(0, 3, 1, 2), size=(height, width), mode="bicubic", antialias=True
    )
    return moved.permute(0, 2, 3, 1).clamp(0, 1)


class LunaChessRefiner(ImageAndReport):
    """The chess refiner on the graph's models: grid x grid overlapping tiles, the even cells in one
    sampler call, then the odd ones (on the picture the first pass left), each tile conditioned by
    its own vault answer, pasted back feathered. IMAGE batch of N: N results, each on its own."""

    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return _inputs(CHESS_OMITTED, {})

    # ComfyUI calls a node with each input by name: the parameters are INPUT_TYPES, one for one
    # (tests/test_architecture.py holds them equal).
    def refine(
        self,
        image,
        model,
        vae,
        clip,
        source,
        alpha,
        k,
        temperature,
        projector,
        grid,
        strength,
        steps,
        guidance,
        seed,
        batch_size,
        sampler_name,
        scheduler,
        home,
        positive=None,
        negative=None,
        server_url="",
    ):
        # torch: the nodes run inside ComfyUI, which has it loaded already
        import torch

        run, settings = _start("Luna Chess Refiner", model, clip, vae, locals(), CHESS_OMITTED)

        def paint(canvas) -> None:
            height, width = canvas.shape[:2]
            tiles = chess_tiles(width, height, settings.grid, settings.overlap, 8)
            for parity in (0, 1):
                cells = [t for t in tiles if t.parity == parity]
                if not cells:
                    continue
                pixels = torch.stack([_cut(canvas, t.rect) for t in cells])
                sizes = [
                    (height, width, t.rect.y, t.rect.x, t.rect.height, t.rect.width) for t in cells
                ]
                refined = run.refine(pixels, sizes, [run.item_seed(t.index) for t in cells])
                for tile, pixels_back in zip(cells, refined):
                    feather = tile_feather(tile, tiles, (width, height))
                    mask = feather_mask(tile.rect.width, tile.rect.height, feather)
                    _paste(canvas, tile.rect, pixels_back, mask)

        out = _painted(image, paint)
        tile = chess_tiles(out.shape[2], out.shape[1], settings.grid, settings.overlap, 8)[0].rect
        head = (
            f"Luna Chess Refiner: {len(out)} image(s), {settings.grid}x{settings.grid} tiles of "
            f"{tile.width}x{tile.height}, two passes, source {run.answers.source.source}"
        )
        return out, run.report(head)


def _regions(masks, detections, width: int, height: int) -> list[tuple]:
    """(box, bool mask [H, W], prompt piece) per region, from LunaDetections or a MASK batch."""
    if detections is not None:
        found = detections["detections"]
        if tuple(detections["size"]) != (width, height):
            w, h = detections["size"]
            raise QueryError(f"the detections are for a {w}x{h} image, not {width}x{height}")
        regions = [(d.box, d.mask, d.prompt) for d in found]
    elif masks is not None:
        array = masks.detach().cpu().numpy() if hasattr(masks, "detach") else np.asarray(masks)
        array = array[None] if array.ndim == 2 else array
        if array.shape[1:] != (height, width):
            raise QueryError(
                f"the MASK batch is {array.shape[2]}x{array.shape[1]}, the IMAGE {width}x{height}"
            )
        regions = []
        for m in array > 0.5:
            ys, xs = np.nonzero(m)
            if len(xs):
                box = Box(int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1)
                regions.append((box, m, None))
    else:
        raise QueryError("connect the regions to refine: masks (one per detection) or detections")
    if not regions:
        raise QueryError("no region to refine: the detection list is empty (or every mask is)")
    return regions


class LunaSemanticDetailer(ImageAndReport):
    """The detailer on the graph's models: each region (a MASK per detection, or LunaDetections)
    grown by its margin, resized to `crop_size`, all crops in one sampler call, each conditioned by
    its own vault answer (with its detection's prompt piece), pasted back through its mask."""

    FUNCTION = "detail"

    @classmethod
    def INPUT_TYPES(cls):
        spec = _inputs(
            DETAIL_OMITTED,
            {
                "crop_size": (
                    "INT",
                    {
                        "default": 1024,
                        "min": 64,
                        "max": MAX_CROP,
                        "step": 8,
                        "tooltip": "each crop is refined at this size: the model's native one",
                    },
                ),
            },
        )
        spec["optional"] = {
            "masks": ("MASK", {"tooltip": "one mask per region (a detector's MASK batch)"}),
            "detections": ("LunaDetections",),
            **spec["optional"],
        }
        return spec

    # ComfyUI calls a node with each input by name: the parameters are INPUT_TYPES, one for one
    # (tests/test_architecture.py holds them equal).
    def detail(
        self,
        image,
        model,
        vae,
        clip,
        source,
        alpha,
        k,
        temperature,
        projector,
        piece_mode,
        strength,
        steps,
        guidance,
        seed,
        batch_size,
        sampler_name,
        scheduler,
        crop_size,
        home,
        masks=None,
        detections=None,
        positive=None,
        negative=None,
        server_url="",
    ):
        # torch: the nodes run inside ComfyUI, which has it loaded already
        import torch

        run, settings = _start("Luna Semantic Detailer", model, clip, vae, locals(), DETAIL_OMITTED)
        side = max(8, int(crop_size) // 8 * 8)
        counts = []

        def paint(canvas) -> None:
            height, width = canvas.shape[:2]
            regions = _regions(masks, detections, width, height)
            crops = detail_crops(width, height, [r[0] for r in regions], settings.margin)
            counts.append(len(crops))
            pixels = torch.cat([_resized(_cut(canvas, c.rect)[None], side, side) for c in crops])
            sizes = [(height, width, c.rect.y, c.rect.x, side, side) for c in crops]
            seeds = [run.item_seed(i) for i in range(len(crops))]
            refined = run.refine(pixels, sizes, seeds, [r[2] for r in regions])
            for crop, (box, mask, _), back in zip(crops, regions, refined):
                rect = crop.rect
                weights = feather_mask(
                    rect.width, rect.height, crop_feather(crop, box, (width, height))
                ) * soft_mask(mask, rect, box)
                _paste(canvas, rect, _resized(back[None], rect.width, rect.height)[0], weights)

        out = _painted(image, paint)
        head = (
            f"Luna Semantic Detailer: {len(out)} image(s), {counts[0]} region(s) at "
            f"{side}x{side}, one pass, source {run.answers.source.source}"
        )
        return out, run.report(head)
