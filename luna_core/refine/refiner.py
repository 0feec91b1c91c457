"""Refine a person's image: the chess refiner (tile by tile, even cells then odd) and the semantic
detailer (crop by crop), each item conditioned by its own vault or projector answer, every item of a
pass in one sampler call (chunked only by `batch_size`).

    refiner = Refiner(home, profile, SourceSettings(source="vault"))
    image, report = refiner.chess(read_picture("render.png"))
    save_image(image, "render.refined.png")
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from luna_core.ask.boxes import Box
from luna_core.ask.vault_query import VaultQuery
from luna_core.errors import QueryError
from luna_core.home.home import LunaHome
from luna_core.metadata.record import Lora
from luna_core.models.profiles import ModelProfile, choose_device, choose_dtype
from luna_core.refine.canvas import crop_pixels, paste_pixels, resize_pixels, to_picture
from luna_core.refine.conditioning import Conditioner
from luna_core.refine.geometry import (
    Tile,
    chess_tiles,
    crop_feather,
    detail_crops,
    feather_mask,
    soft_mask,
    tile_feather,
)
from luna_core.refine.lora_files import LoraError, LoraLibrary, canonical_name, lora_set
from luna_core.refine.memory import peak_memory
from luna_core.refine.options import (
    BLOCKS,
    CHESS_IP_WEIGHT,
    DETAIL_IP_WEIGHT,
    RefineSettings,
    SourceSettings,
)
from luna_core.refine.refine_report import PassReport, RefineReport
from luna_core.refine.sampler import SDXLSampler, item_seed, to_pixels

log = logging.getLogger(__name__)


@dataclass
class _Pass:
    """One sampler pass's items: the crops, where each sits, and what each carries."""

    name: str
    index: int  # the pass's place in the item seeds (seed, pass, item)
    crops: list
    places: list[Tile]
    original: tuple[int, int]  # the whole image (height, width), for SDXL's micro-conditioning
    target: tuple[int, int]  # each item's size as refined
    ip_weight: float
    on_done: Callable[[int], None]
    pieces: list | None = None  # a prompt piece per item
    item_loras: list | None = None  # each item's own LoRAs


class Refiner:
    """The sampler, the conditioning source and (optionally) an IP-Adapter, loaded once for many
    images."""

    def __init__(
        self,
        home: LunaHome,
        profile: ModelProfile,
        source: SourceSettings = SourceSettings(),
        device: str = "auto",
        dtype: str = "auto",
        ip_adapter: str | None = None,
    ):
        self.profile = profile
        torch_device = choose_device(device)
        torch_dtype = choose_dtype(
            torch_device, profile.default_dtype if dtype == "auto" else dtype
        )
        self.vault = VaultQuery(home, profile, device, dtype)
        self.conditioner = Conditioner(self.vault, source)
        self.sampler = SDXLSampler(
            profile.sdxl_model, profile.sdxl_revision, torch_device, torch_dtype
        )
        if ip_adapter:
            self.sampler.load_ip_adapter(ip_adapter, CHESS_IP_WEIGHT)
        self.source = source
        self.lora_library = LoraLibrary(home.lora_dirs())

    def with_source(self, source: SourceSettings) -> Refiner:
        """This refiner (its models, vault and LoRA folders) answering from another source."""
        if source == self.source:
            return self
        other = copy.copy(self)
        other.source, other.conditioner = source, Conditioner(self.vault, source)
        return other

    def refine(
        self,
        image,
        settings: RefineSettings = RefineSettings(),
        boxes: list[Box] | None = None,
        detections: list | None = None,
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        """The detailer on `detections` (a detector's: masks, prompt pieces, LoRAs) or `boxes`, else
        the chess refiner."""
        if detections and boxes:
            raise QueryError("give boxes or detections, not both")
        if detections:
            return self.detail(
                image,
                [d.box for d in detections],
                settings,
                on_progress,
                masks=[d.mask for d in detections],
                pieces=[d.prompt for d in detections],
                loras=[d.loras for d in detections],
            )
        if boxes:
            return self.detail(image, boxes, settings, on_progress)
        return self.chess(image, settings, on_progress)

    # ------------------------------------------------------------ the two modes

    def chess(
        self,
        image,
        settings: RefineSettings = RefineSettings(),
        on_progress: Callable[[str, int, int], None] | None = None,
    ):
        """Refine every cell of a grid x grid chessboard: the even cells in one sampler call, then
        the odd ones (reading the image as the first pass left it)."""
        settings.sampler.check()
        width, height = image.size
        tiles = chess_tiles(
            width, height, settings.grid, settings.overlap, self.sampler.pixel_multiple
        )
        canvas = np.asarray(image.convert("RGB"), dtype=np.float32)
        started = time.perf_counter()
        report = self._report("chess", image, (tiles[0].rect.width, tiles[0].rect.height))
        weight = CHESS_IP_WEIGHT if settings.ip_weight is None else settings.ip_weight
        whole = self._whole_image(image, settings, report)
        for parity, name in ((0, "even"), (1, "odd")):
            cells = [t for t in tiles if t.parity == parity]
            if not cells:
                continue
            crops = [crop_pixels(canvas, t.rect) for t in cells]
            target = (cells[0].rect.height, cells[0].rect.width)
            work = _Pass(
                name,
                parity,
                crops,
                cells,
                (height, width),
                target,
                weight,
                lambda n_done, n=name, total=len(cells): (
                    on_progress and on_progress(n, n_done, total)
                ),
            )
            refined, done = self._refine_items(work, settings, report, whole)
            for tile, pixels in zip(cells, refined):
                paste_pixels(
                    canvas,
                    tile.rect,
                    to_pixels(pixels),
                    feather_mask(
                        tile.rect.width,
                        tile.rect.height,
                        tile_feather(tile, tiles, (width, height)),
                    ),
                )
            report.passes.append(done)
        report.regions = [str(t.rect) for t in tiles]
        return to_picture(canvas), self._finish(report, started)

    def detail(
        self,
        image,
        boxes: list[Box],
        settings: RefineSettings = RefineSettings(),
        on_progress: Callable[[str, int, int], None] | None = None,
        masks: list | None = None,
        pieces: list | None = None,
        loras: list | None = None,
    ):
        """Refine each box with its context margin at the model's native size, all crops in one
        call, and paste each back with a feathered edge; with `masks` ([H, W] bool over the
        image, one per box: a detector's), only the mask's pixels, its edge feathered, are pasted
        back. `pieces`: a prompt piece per box (or None), mixed into its answer; `loras`: each
        box's own LoRAs, beside the run's."""

        settings.sampler.check()
        width, height = image.size
        crops_at = detail_crops(width, height, boxes, settings.margin)
        side = self.sampler.native_size
        canvas = np.asarray(image.convert("RGB"), dtype=np.float32)
        crops = [
            Image.fromarray(crop_pixels(canvas, c.rect)).resize(
                (side, side), Image.Resampling.LANCZOS
            )
            for c in crops_at
        ]
        started = time.perf_counter()
        report = self._report("detail", image, (side, side))
        weight = DETAIL_IP_WEIGHT if settings.ip_weight is None else settings.ip_weight
        whole = self._whole_image(image, settings, report)
        work = _Pass(
            "crops",
            0,
            crops,
            crops_at,
            (height, width),
            (side, side),
            weight,
            lambda n_done: on_progress and on_progress("crops", n_done, len(crops_at)),
            pieces,
            loras,
        )
        refined, done = self._refine_items(work, settings, report, whole)
        for i, (crop, box, pixels) in enumerate(zip(crops_at, boxes, refined)):
            back = resize_pixels(to_pixels(pixels), crop.rect.width, crop.rect.height)
            mask = feather_mask(
                crop.rect.width, crop.rect.height, crop_feather(crop, box, (width, height))
            )
            if masks is not None:
                mask = mask * soft_mask(masks[i], crop.rect, box)
            paste_pixels(canvas, crop.rect, back, mask)
        report.passes.append(done)
        report.regions = [str(c.rect) for c in crops_at]
        return to_picture(canvas), self._finish(report, started)

    # ------------------------------------------------------------ shared steps

    def _refine_items(
        self, work: _Pass, settings: RefineSettings, report: RefineReport, whole=None
    ):
        """Condition and refine one pass's items: one sampler call (or one per item when
        sequential)."""

        pictures = [c if hasattr(c, "convert") else Image.fromarray(c) for c in work.crops]
        conditions = self.conditioner.condition(
            pictures, pieces=work.pieces, lora_cap=settings.lora_from_vault
        )
        if whole is not None:
            conditions = [
                replace(
                    c,
                    composition_embeds=whole.prompt_embeds,
                    composition_negative_embeds=whole.negative_prompt_embeds,
                )
                for c in conditions
            ]
        loras = self._lora_sets(conditions, settings, work.item_loras, report)
        time_ids = np.array(
            [[*work.original, t.rect.y, t.rect.x, *work.target] for t in work.places],
            dtype=np.float32,
        )
        seeds = [item_seed(settings.sampler.seed, work.index, t.index) for t in work.places]
        ip = None
        if self.sampler.ip_adapter:
            self.sampler.pipe.set_ip_adapter_scale(work.ip_weight)
            ip = self.sampler.ip_image_embeds(pictures)
        sampler = (
            replace(settings.sampler, batch_size=1) if settings.sequential else settings.sampler
        )
        plan = self.sampler.plan(len(pictures), work.target[0], work.target[1], sampler)
        report.memory_budget_mb = plan.budget_mb
        started = time.perf_counter()
        with peak_memory(self.sampler.device) as peak:
            refined = self.sampler.refine(
                pictures,
                conditions,
                time_ids,
                seeds,
                sampler,
                ip,
                on_chunk=work.on_done,
                loras=loras if any(loras) else None,
            )
        return refined, PassReport(
            work.name,
            len(pictures),
            plan.unet_chunks,
            time.perf_counter() - started,
            plan.vae_chunks,
            plan.describe(),
            peak["peak_mb"],
            peak["measured_as"],
        )

    def _whole_image(self, image, settings: RefineSettings, report: RefineReport):
        """Per-block conditioning: the whole image's own answer, which the composition blocks
        see."""
        if not settings.per_block:
            return None
        whole = self.conditioner.condition([image.convert("RGB")])[0]
        blocks = settings.sampler.composition_blocks
        report.per_block = {
            "whole_image": list(blocks),
            "own": [b for b in BLOCKS if b not in blocks],
            "whole_image_neighbors": whole.info.get("neighbors", []),
        }
        return whole

    def _lora_sets(
        self, conditions, settings: RefineSettings, item_loras: list | None, report: RefineReport
    ) -> list:
        """Each item's LoRA set (the run's, its detection's, its neighbours'), with the files found
        and loaded. A LoRA a person named (the run's, a detection's) must exist: its absence is an
        error before any sampling; the neighbours' LoRAs without a file are named in one warning and
        left out."""
        sets, named = [], set()
        for i, condition in enumerate(conditions):
            chosen = lora_set(list(settings.loras) + list(item_loras[i] if item_loras else ()))
            named |= {lora.name for lora in chosen}
            sets.append(lora_set(list(chosen) + list(condition.info.get("vault_loras", ()))))
        names = sorted({lora.name for s in sets for lora in s})
        if not names:
            report.loras.setdefault("items", []).extend([[] for _ in sets])
            return sets
        hashes = {
            name: digest
            for c in conditions
            for name, digest in c.info.get("lora_hashes", {}).items()
        }
        found, missing = self.lora_library.resolve(names, hashes)
        where = (
            ", ".join(str(d) for d in self.lora_library.dirs)
            or "no folder ([models] lora_dirs is not set)"
        )
        if named & set(missing):
            raise LoraError(
                f"LoRA not found: {', '.join(sorted(named & set(missing)))} (looked in {where}; "
                "a path is read as that file). Nothing was refined."
            )
        # one warning per refinement, not per pass
        if set(missing) - set(report.loras.get("missing", [])):
            log.warning("LoRAs not found in %s, skipped: %s", where, ", ".join(missing))
        # Names that find the same file (`x`, `x.safetensors`, its hash) are one adapter, named by
        # its file.
        files = {name: canonical_name(str(path)) for name, path in found.items()}
        adapters = self.sampler.load_loras({files[name]: path for name, path in found.items()})
        sets = [
            lora_set([Lora(files[lora.name], lora.weight) for lora in s if lora.name in found])
            for s in sets
        ]
        known = {a["file"] for a in report.loras.get("adapters", [])}
        report.loras.setdefault("adapters", []).extend(
            {**a.describe(), "name": a.path.stem} for a in adapters if str(a.path) not in known
        )
        report.loras["missing"] = sorted(set(report.loras.get("missing", [])) | set(missing))
        report.loras.setdefault("items", []).extend(
            [[f"{Path(lora.name).stem}:{lora.weight:g}" for lora in s] for s in sets]
        )
        return sets

    def _report(self, mode: str, image, item_size) -> RefineReport:
        return RefineReport(
            mode, image.size, item_size, self.source.source, self.sampler.ip_adapter
        )

    def _finish(self, report: RefineReport, started: float) -> RefineReport:
        # The start is the call's own (a Refiner shared by threads, or reused after a failed call,
        # keeps none).
        report.seconds = time.perf_counter() - started
        log.info(
            "refined %s: %d items in %d sampler call(s), %.1fs",
            report.mode,
            report.items,
            report.sampler_calls,
            report.seconds,
        )
        return report
