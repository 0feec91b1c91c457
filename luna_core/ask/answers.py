"""What the vault answers: neighbours (a library image, its similarity and prompt) and a
conditioning that saves as diffusers' safetensors; the picture or crop a question is about."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from luna_core.ask.boxes import Box
from luna_core.files import write_atomically
from luna_core.images import read_picture


@dataclass
class Neighbor:
    image_id: int
    similarity: float
    weight: float
    path: str
    prompt: str | None
    negative_prompt: str | None
    generator: str | None
    content_hash: str
    # [{"name", "weight"}] the catalog read from the image's metadata
    loras: list = field(default_factory=list)
    # A1111's "Lora hashes" ("name: hash, ..."), where the metadata has it
    lora_hashes: str | None = None
    # the rules its prompts are read by (luna_core.prompts.syntax); None in older indexes
    prompt_syntax: str | None = None


@dataclass
class Conditioning:
    prompt_embeds: np.ndarray  # [1, 77 (154 for concat), D]
    pooled_prompt_embeds: np.ndarray  # [1, P]
    negative_prompt_embeds: np.ndarray
    negative_pooled_prompt_embeds: np.ndarray
    neighbors: list[Neighbor] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def _tensors(self) -> tuple[dict, dict]:
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        tensors = {
            name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), dtype=np.float32))
            for name in (
                "prompt_embeds",
                "pooled_prompt_embeds",
                "negative_prompt_embeds",
                "negative_pooled_prompt_embeds",
            )
        }
        metadata = {
            "luna": json.dumps(
                {**self.info, "neighbors": [n.__dict__ for n in self.neighbors]}, default=str
            )
        }
        return tensors, metadata

    def save(self, path: str | Path) -> Path:
        """A safetensors file diffusers' SDXL pipelines take as keyword arguments, unchanged."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        from safetensors.torch import save_file

        tensors, metadata = self._tensors()
        return write_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def to_bytes(self) -> bytes:
        """The same safetensors content as `save`, in memory (what `luna serve` answers)."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        from safetensors.torch import save

        tensors, metadata = self._tensors()
        return save(tensors, metadata=metadata)


def weighted_sum(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """sum_i w_i * rows[i] in float32 for float16 rows (torch converts float16 ~10x faster than
    numpy) or float32 ones (pca-zstd's coefficients)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    flat = torch.from_numpy(np.ascontiguousarray(rows).reshape(len(rows), -1)).float()
    return (torch.from_numpy(np.asarray(weights, dtype=np.float32)) @ flat).numpy()


def load_image(path: str | Path, box: Box | None = None):
    """The query picture (optionally cropped), with errors that name the file and the reason."""
    return crop(read_picture(path), box, str(path))


def crop(image, box: Box | None, name: str):
    """The part of `image` inside `box` (the whole image without one); a box outside it is an
    error."""
    if box is None:
        return image
    box.check_within(image.width, image.height, name)
    return image.crop(box.edges)
