"""How many items of a pass go through the VAE and the UNet at once, under a memory budget, and the
peak memory a pass really used.

The budget is the only thing that splits a pass into chunks (besides an explicit `batch_size` cap):
- per-item estimates: the VAE at full resolution holds about 6 activations of its widest
  full-size layer (`block_out_channels[0]` x H x W); the UNet about 12 activations per level (its
  skip connections included), per guidance row;
- no budget given: 80 % of the free GPU memory on CUDA, half the available RAM on a CPU.

Estimates are estimates: the measured peak is printed beside the budget so a person can set it.
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

VAE_ACTIVATIONS = 6
UNET_ACTIVATIONS = 12
MB = 1 << 20


def megabytes(value: float) -> str:
    return f"{value:,.0f} MB" if value >= 10 else f"{value:.2g} MB"


@dataclass(frozen=True)
class ChunkPlan:
    items: int
    budget_mb: float
    vae_item_mb: float
    unet_item_mb: float
    vae_items: int  # items per VAE encode / decode call
    unet_items: int  # items per UNet call

    @property
    def vae_chunks(self) -> int:
        return -(-self.items // self.vae_items) if self.items else 0

    @property
    def unet_chunks(self) -> int:
        return -(-self.items // self.unet_items) if self.items else 0

    def describe(self) -> str:
        if self.vae_chunks <= 1 and self.unet_chunks <= 1:
            return (
                f"{self.items} item(s) in one VAE and one UNet call (budget "
                f"{megabytes(self.budget_mb)})"
            )
        return (
            f"split by the {megabytes(self.budget_mb)} budget: VAE {self.vae_chunks} chunk(s) of "
            "up to "
            f"{self.vae_items}, UNet {self.unet_chunks} chunk(s) of up to {self.unet_items} "
            "(estimated "
            f"{megabytes(self.vae_item_mb)} per item in the VAE, {megabytes(self.unet_item_mb)} "
            "in the UNet)"
        )


def default_budget_mb(device) -> float:
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return 0.8 * free / MB
    return 0.5 * _available_ram() / MB


def _proc_bytes(path: str, key: str) -> int | None:
    """A `key:  N kB` line of a Linux /proc file, in bytes (None where there is no such file or
    line)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _available_ram() -> int:
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    return (
        available
        if available is not None
        else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    )


@dataclass(frozen=True)
class ModelSizes:
    """What the estimates need of a VAE and a UNet."""

    vae_channels: int  # the VAE's widest full-resolution layer (block_out_channels[0])
    vae_bytes: int  # bytes per value
    vae_factor: int  # pixels per latent, per side
    unet_channels: tuple[int, ...]  # block_out_channels, one per level
    unet_bytes: int


def plan_chunks(
    items: int,
    height: int,
    width: int,
    sizes: ModelSizes,
    guidance_rows: int,
    budget_mb: float,
    cap: int = 0,
) -> ChunkPlan:
    """Items per VAE and UNet call for `items` pictures of height x width (cap: an explicit batch
    size)."""
    vae_mb = VAE_ACTIVATIONS * sizes.vae_channels * height * width * sizes.vae_bytes / MB
    latent = (height // sizes.vae_factor) * (width // sizes.vae_factor)
    unet_mb = (
        guidance_rows
        * UNET_ACTIVATIONS
        * sizes.unet_bytes
        * latent
        * sum(c / 4**level for level, c in enumerate(sizes.unet_channels))
        / MB
    )
    limit = cap if cap > 0 else max(items, 1)
    vae_items = max(1, min(limit, int(budget_mb // max(vae_mb, 1e-9))))
    unet_items = max(1, min(limit, int(budget_mb // max(unet_mb, 1e-9))))
    return ChunkPlan(items, budget_mb, vae_mb, unet_mb, vae_items, unet_items)


@contextlib.contextmanager
def peak_memory(device):
    """Yields a dict that holds, after the block, `peak_mb` and what it measured: CUDA's allocator
    peak, or the process's resident-set high-water mark (reset at the start where Linux allows)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    result: dict = {}
    cuda = getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result["measured_as"] = "CUDA allocator peak"
    else:
        try:
            # resets VmHWM to the current resident set
            Path("/proc/self/clear_refs").write_text("5")
            result["measured_as"] = "process resident-set peak during the pass"
        except OSError:
            result["measured_as"] = "process resident-set peak since it started"
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize(device)
            result["peak_mb"] = torch.cuda.max_memory_allocated(device) / MB
        else:
            result["peak_mb"] = _rss_high_water() / MB


def _rss_high_water() -> int:
    peak = _proc_bytes("/proc/self/status", "VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
