"""What a refinement is asked to do: the sampler's settings, the refiner's, and where each item's
conditioning comes from. Plain settings, no model: the CLI and the Dagster launchpad take their
defaults from here without loading torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from luna_core.ask.ask_options import alpha_option, k_option, temperature_option
from luna_core.ask.mixing import (
    DEFAULT_ALPHA,
    DEFAULT_K,
    DEFAULT_TEMPERATURE,
    check_inputs,
)
from luna_core.declare import check_declared, option
from luna_core.errors import LunaConfigError, QueryError
from luna_core.metadata.record import Lora
from luna_core.projector.names import DEFAULT_PROJECTOR
from luna_core.refine.geometry import DEFAULT_GRID, DEFAULT_MARGIN, DEFAULT_OVERLAP
from luna_core.refine.lora_files import lora_set

BLOCKS = ("down", "mid", "up")
MAX_GRID = 16  # 256 tiles: past this a tile is smaller than the UNet's native size on any picture
MAX_STEPS = 1000
MAX_SEED = 2**63 - 1  # torch generators take a signed 64-bit seed


@dataclass(frozen=True)
class SamplerSettings:
    # how much of the noise schedule is re-run: 0 keeps the tile, 1 redraws it
    strength: float = 0.35
    steps: int = 20
    guidance_scale: float = 5.0
    seed: int = 0
    # a cap on items per VAE and UNet call; 0: only the memory budget splits a pass
    batch_size: int = 0
    # what one VAE or UNet call may take; 0: 80 % of free GPU memory, half the RAM on a CPU
    memory_budget_mb: float = 0
    # Per-block conditioning: the UNet blocks that see the composition conditioning (the whole
    # image's answer) when a refinement asks for it; the others see the item's own answer.
    composition_blocks: tuple[str, ...] = ("down", "mid")

    def check(self) -> None:
        if not 0.0 < self.strength <= 1.0:
            raise LunaConfigError(f"strength must be within (0, 1] (got {self.strength})")
        if self.steps < 1:
            raise LunaConfigError(f"steps must be at least 1 (got {self.steps})")
        if self.batch_size < 0:
            raise LunaConfigError(f"batch size must be 0 (no cap) or more (got {self.batch_size})")
        if not math.isfinite(self.memory_budget_mb) or self.memory_budget_mb < 0:
            raise LunaConfigError(
                "memory budget must be 0 (automatic) or a number of MB (got "
                f"{self.memory_budget_mb})"
            )
        unknown = [b for b in self.composition_blocks if b not in BLOCKS]
        if unknown or not self.composition_blocks:
            raise LunaConfigError(
                f"composition blocks must be some of {', '.join(BLOCKS)} (got "
                f"{', '.join(self.composition_blocks) or 'none'})"
            )
        if not math.isfinite(self.guidance_scale) or self.guidance_scale < 0:
            raise LunaConfigError(
                f"guidance scale must be a non-negative number (got {self.guidance_scale})"
            )


CHESS_IP_WEIGHT = 0.4
DETAIL_IP_WEIGHT = 0.5


@dataclass(frozen=True)
class RefineSettings:
    grid: int = DEFAULT_GRID
    overlap: float = DEFAULT_OVERLAP
    margin: float = DEFAULT_MARGIN
    sampler: SamplerSettings = SamplerSettings()
    ip_weight: float | None = None  # None: 0.4 for the chess refiner, 0.5 for the detailer
    sequential: bool = False  # one item per sampler call (for comparison)
    loras: tuple[Lora, ...] = ()  # LoRAs every item gets (a detection may add its own)
    # > 0: each item also gets its k neighbours' LoRAs, the strongest this many
    lora_from_vault: int = 0
    # the composition blocks see the whole image's answer, the others the item's own
    per_block: bool = False


DEFAULT_LORA_CAP = 3  # --lora-from vault: the neighbours' strongest LoRAs kept per item
SOURCES = ("vault", "projector", "prompt", "blend")
PIECE_MODES = ("concat", "blend")


@dataclass(frozen=True)
class RefineOptions:
    """A refinement as a person asks for it: the one declaration of the options that `luna refine`,
    the `refine_images` launchpad and the ComfyUI Luna Refine node are made from. `settings()` and
    `source()` check them and give what the refiner takes."""

    # where each item's conditioning comes from
    source: str = option("vault", "where each item's conditioning comes from", choices=SOURCES)
    prompt: str | None = option(None, "typed prompt (sources prompt and blend)")
    negative_prompt: str | None = option(
        None, "typed negative prompt (sources prompt and blend; none: SDXL's zeros)"
    )
    alpha: float = alpha_option("the vault's share in blend")
    k: int = k_option("neighbours per item (vault, blend)")
    temperature: float = temperature_option()
    projector: str = option(DEFAULT_PROJECTOR, "projector model URI (source projector)")
    tracking_uri: str | None = option(
        None, "MLflow registry (default: $LUNA_MLFLOW_URI, else the home's own)"
    )
    piece_mode: str = option(
        "concat", "how a detection's prompt piece meets its item's answer", choices=PIECE_MODES
    )
    # the refiner and its sampler
    grid: int = option(DEFAULT_GRID, "chess refiner: N x N tiles", low=1, high=MAX_GRID)
    strength: float = option(
        SamplerSettings.strength, "img2img strength", low=0.0, low_open=True, high=1.0, step=0.01
    )
    steps: int = option(SamplerSettings.steps, "sampler steps", low=1, high=MAX_STEPS)
    guidance: float = option(
        SamplerSettings.guidance_scale, "classifier-free guidance scale", low=0.0, step=0.1
    )
    seed: int = option(SamplerSettings.seed, "noise seed (item i: seed + i)", low=0, high=MAX_SEED)
    batch_size: int = option(
        SamplerSettings.batch_size,
        "a cap on items per VAE and UNet call (0: none; the memory budget splits a pass)",
        low=0,
    )
    memory_budget_mb: float = option(
        SamplerSettings.memory_budget_mb,
        "what one VAE or UNet call may take, in MB (0: 80% of free GPU memory, half the RAM on a "
        "CPU)",
        low=0.0,
        flag="--memory-budget",
        metavar="MB",
    )
    ip_adapter: str | None = option(
        None, "IP-Adapter weights (.safetensors with image_encoder/ beside it)"
    )
    ip_weight: float | None = option(
        None, "IP-Adapter scale (default 0.4 chess, 0.5 detailer)", low=0.0
    )
    sequential: bool = option(False, "one item per sampler call (for comparison)")
    loras: tuple[str, ...] = option(
        (),
        "a LoRA every item gets, NAME:WEIGHT (repeat for more), from the folders of [models] "
        "lora_dirs",
        flag="--lora",
        metavar="NAME:WEIGHT",
    )
    lora_from: str | None = option(
        None,
        "vault: each item also gets the weighted union of its k neighbours' LoRAs",
        choices=("vault",),
    )
    lora_cap: int = option(
        DEFAULT_LORA_CAP, "--lora-from vault: the strongest this many per item", low=1, high=16
    )
    per_block: bool = option(
        False, "the composition blocks see the whole image's answer, the others each item's own"
    )
    composition_blocks: tuple[str, ...] = option(
        SamplerSettings.composition_blocks,
        "--per-block: which UNet blocks see the whole image's answer",
        choices=BLOCKS,
    )

    def settings(self) -> RefineSettings:
        if self.lora_from not in (None, "vault"):
            raise LunaConfigError(f"--lora-from takes vault (got {self.lora_from!r})")
        check_declared(self)
        sampler = SamplerSettings(
            strength=self.strength,
            steps=self.steps,
            guidance_scale=self.guidance,
            seed=self.seed,
            batch_size=self.batch_size,
            memory_budget_mb=self.memory_budget_mb,
            composition_blocks=tuple(self.composition_blocks),
        )
        sampler.check()
        return RefineSettings(
            grid=self.grid,
            sampler=sampler,
            ip_weight=self.ip_weight,
            sequential=self.sequential,
            loras=lora_set(list(self.loras)),
            lora_from_vault=self.lora_cap if self.lora_from else 0,
            per_block=self.per_block,
        )

    def source_settings(self) -> SourceSettings:
        source = SourceSettings(
            source=self.source,
            prompt=self.prompt or None,
            negative_prompt=self.negative_prompt or None,
            alpha=self.alpha,
            k=self.k,
            temperature=self.temperature,
            projector=self.projector,
            tracking_uri=self.tracking_uri or None,
            piece_mode=self.piece_mode,
        )
        source.check()
        return source


@dataclass(frozen=True)
class SourceSettings:
    source: str = "vault"
    prompt: str | None = None  # the typed prompt (sources prompt and blend)
    negative_prompt: str | None = None  # typed negative (prompt, blend); none: SDXL's zeros
    alpha: float = DEFAULT_ALPHA  # the vault's share in blend
    k: int = DEFAULT_K
    temperature: float = DEFAULT_TEMPERATURE
    projector: str = DEFAULT_PROJECTOR
    tracking_uri: str | None = None
    # how a detection's prompt piece meets its item's answer: concat or blend
    piece_mode: str = "concat"

    def check(self) -> None:
        if self.piece_mode not in PIECE_MODES:
            raise QueryError(f"piece mode {self.piece_mode!r} is not concat or blend")
        if self.source not in SOURCES:
            raise QueryError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")
        if self.source in ("prompt", "blend") and not self.prompt:
            raise QueryError(f"source {self.source} needs a typed prompt: give --prompt")
        check_inputs(
            "blend" if self.source == "blend" else "replace",
            self.alpha,
            self.prompt,
            self.k if self.source in ("vault", "blend") else None,
            self.temperature if self.source in ("vault", "blend") else None,
        )
