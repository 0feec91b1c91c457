"""What a refinement did, pass by pass (items, sampler calls, chunks, LoRAs, peak memory), and
the refined picture saved with that summary in its metadata."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import PngImagePlugin

from luna_core.errors import LunaConfigError
from luna_core.files import write_atomically
from luna_core.refine.memory import megabytes


@dataclass
class PassReport:
    name: str
    items: int
    sampler_calls: int
    seconds: float
    vae_calls: int = 1
    chunking: str = ""  # how the memory plan split the pass (luna_core.refine.memory)
    peak_memory_mb: float | None = None
    peak_measured_as: str = ""


@dataclass
class RefineReport:
    mode: str  # chess | detail
    size: tuple[int, int]
    item_size: tuple[int, int]
    source: str
    ip_adapter: str | None
    passes: list[PassReport] = field(default_factory=list)
    seconds: float = 0.0
    regions: list[str] = field(default_factory=list)
    loras: dict = field(default_factory=dict)  # adapters used, each item's set, files not found
    per_block: dict | None = None  # which blocks saw the whole image's answer
    memory_budget_mb: float = 0.0

    @property
    def peak_memory_mb(self) -> float | None:
        peaks = [p.peak_memory_mb for p in self.passes if p.peak_memory_mb is not None]
        return max(peaks) if peaks else None

    @property
    def split_by_budget(self) -> bool:
        return any(p.sampler_calls > 1 or p.vae_calls > 1 for p in self.passes)

    @property
    def items(self) -> int:
        return sum(p.items for p in self.passes)

    @property
    def sampler_calls(self) -> int:
        return sum(p.sampler_calls for p in self.passes)

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "items": self.items,
            "sampler_calls": self.sampler_calls,
            "peak_memory_mb": self.peak_memory_mb,
            "split_by_budget": self.split_by_budget,
        }

    def summary(self) -> str:
        """What a person reads after a run: passes, LoRAs, per-block conditioning, memory."""
        lines = [
            f"{self.mode}: "
            + ", ".join(
                f"{p.name}: {p.items} items in {p.sampler_calls} UNet call(s), {p.seconds:.2f}s"
                for p in self.passes
            )
            + f"; source {self.source}"
            + (f", IP-Adapter {self.ip_adapter}" if self.ip_adapter else "")
        ]
        if self.loras.get("adapters"):
            with_sets = sum(1 for s in self.loras["items"] if s)
            lines.append(
                f"LoRAs: {', '.join(a['name'] for a in self.loras['adapters'])} "
                f"({with_sets} of {len(self.loras['items'])} items carry some)"
            )
        if self.loras.get("missing"):
            lines.append(f"LoRAs not found (skipped): {', '.join(self.loras['missing'])}")
        if self.per_block:
            lines.append(
                f"per-block: {', '.join(self.per_block['whole_image'])} blocks saw the whole "
                "image's answer, "
                f"{', '.join(self.per_block['own']) or 'none'} the item's own"
            )
        for p in self.passes:
            if p.chunking.startswith("split"):
                lines.append(f"{p.name}: {p.chunking}")
        if self.peak_memory_mb is not None:
            lines.append(
                f"peak memory {megabytes(self.peak_memory_mb)} "
                f"({self.passes[0].peak_measured_as}); "
                f"budget {megabytes(self.memory_budget_mb)}"
            )
        return "\n".join(lines)


def save_image(image, path: str | os.PathLike[str], report: RefineReport | None = None) -> Path:
    """Write the refined image (format from the suffix), through a temporary file and a rename: a
    failed write leaves nothing behind. PNGs carry the refinement report in a `luna_refine` text
    chunk."""

    path = Path(path)
    suffix = path.suffix.lower()
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
    if suffix not in formats:
        raise LunaConfigError(f"output {path} must end in .png, .jpg or .webp")
    options = {}
    if formats[suffix] == "PNG" and report is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text("luna_refine", json.dumps(report.to_dict(), default=str))
        options["pnginfo"] = info
    return write_atomically(path, lambda tmp: image.save(tmp, format=formats[suffix], **options))
