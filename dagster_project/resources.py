"""Resources: where the Luna home is and how files are read. One place for every asset."""

from __future__ import annotations

import dagster as dg

from luna_core.containers import ProbeLimits
from luna_core.ingest import IngestOptions
from luna_core.settings import LunaHome


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
        return IngestOptions(limits=limits, workers=self.workers, progress=progress)
