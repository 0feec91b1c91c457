"""Resources: where the Luna home is and how files are read. One place for every asset."""

from __future__ import annotations

import dagster as dg

from luna_core.containers.probe import ProbeLimits
from luna_core.home.home import LunaHome
from luna_core.ingest.run import IngestOptions
from luna_core.models.profiles import ModelProfile
from luna_core.vault.embed import EmbedOptions


class LunaHomeResource(dg.ConfigurableResource):
    """The Luna home (stores, settings) and the library roots it catalogues."""

    home: str
    extra_roots: list[str] = []  # scanned in addition to the roots recorded in the home's luna.toml
    max_pixels: int = ProbeLimits.max_pixels
    max_text_bytes: int = ProbeLimits.max_text_bytes
    workers: int = 0  # ingest worker processes; 0 = one per core

    @property
    def luna_home(self) -> LunaHome:
        return LunaHome.resolve(self.home)

    def library_roots(self) -> list[str]:
        roots = self.luna_home.roots()
        return roots + [r for r in self.extra_roots if r not in roots]

    def ingest_options(self, progress: bool = True) -> IngestOptions:
        limits = ProbeLimits(max_pixels=self.max_pixels, max_text_bytes=self.max_text_bytes)
        return IngestOptions(
            limits=limits,
            workers=self.workers,
            progress=progress,
            writer_syntax=self.luna_home.writer_syntax(),
        )


class LunaModelsResource(dg.ConfigurableResource):
    """Which models embed the library, and on what device. Empty fields fall back to the home."""

    # sdxl | tiny; None: $LUNA_PROFILE, else the home's luna.toml, else sdxl
    profile: str | None = None
    # hub id, local folder or single file, overriding the profile's and luna.toml's
    vision_model: str | None = None
    sdxl_model: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    vision_batch_size: int = EmbedOptions.batch_size
    text_batch_size: int = 16  # conditionings are 315 KB a row at SDXL widths: smaller batches
    # image decode threads; 0: one per core (at most 8)
    decode_workers: int = EmbedOptions.decode_workers

    def resolve(self, home: LunaHome) -> ModelProfile:
        return home.profile(self.profile, self.vision_model, self.sdxl_model)

    def embed_options(self, batch_size: int, home: LunaHome | None = None) -> EmbedOptions:
        """`auto` device and dtype fall back to the home's `models.device` / `models.dtype`."""
        settings = home.settings() if home is not None else None
        return EmbedOptions(
            device=settings.text("models.device")
            if settings and self.device == "auto"
            else self.device,
            dtype=settings.text("models.dtype")
            if settings and self.dtype == "auto"
            else self.dtype,
            batch_size=batch_size,
            decode_workers=self.decode_workers,
        )
