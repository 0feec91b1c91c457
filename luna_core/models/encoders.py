"""The two encoders the vault needs, loaded through the ordinary `from_pretrained` code.

- `VisionEncoder`: CLIP-ViT image embeddings (`image_embeds`, projected and L2-normalized).
- `SDXLTextEncoder`: SDXL's text conditioning, computed exactly as SDXL does: the penultimate hidden
  states (`hidden_states[-2]`) of both text encoders concatenated on the last axis, and the pooled
  output from the second encoder's projection.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from luna_core.errors import LunaConfigError
from luna_core.models import single_file
from luna_core.models.references import check_model_reference

log = logging.getLogger(__name__)


def _is_local(model: str) -> bool:
    return Path(model).expanduser().exists()


def _load(loader, model: str, revision: str | None, what: str, **kwargs):
    """from_pretrained with a load failure turned into an error that says what to do."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # Luna shows its own progress; per-file weight bars are noise
    check_model_reference(model, what)
    if revision and not _is_local(model):
        kwargs["revision"] = revision
    try:
        return loader(str(Path(model).expanduser()) if _is_local(model) else model, **kwargs)
    except (OSError, ValueError) as exc:
        raise LunaConfigError(
            f"could not load the {what} from '{model}': {str(exc).splitlines()[0]}. Give a local "
            "folder, "
            "put the weights in the Hugging Face cache, or use the 'tiny' profile (no download)."
        ) from None


@dataclass(frozen=True)
class Preprocessing:
    """CLIP image preprocessing, read from the model's preprocessor_config.json."""

    shortest_edge: int
    crop: tuple[int, int]
    mean: np.ndarray
    std: np.ndarray
    resample: int = Image.Resampling.BICUBIC

    @classmethod
    def from_config(cls, config: dict) -> "Preprocessing":
        size = config.get("size", {})
        edge = size.get("shortest_edge") if isinstance(size, dict) else size
        crop = config.get("crop_size", {"height": edge, "width": edge})
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        return cls(
            shortest_edge=int(edge or crop["height"]),
            crop=(int(crop["height"]), int(crop["width"])),
            mean=np.asarray(
                config.get("image_mean", [0.48145466, 0.4578275, 0.40821073]), np.float32
            ),
            std=np.asarray(
                config.get("image_std", [0.26862954, 0.26130258, 0.27577711]), np.float32
            ),
            resample=int(config.get("resample", Image.Resampling.BICUBIC)),
        )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """RGB → shortest edge resized → centre crop → [0,1] → normalized, as CHW
        float32."""
        image = image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.shortest_edge, int(self.shortest_edge * long / short)
        size = (new_short, new_long) if width <= height else (new_long, new_short)
        if size != image.size:
            image = image.resize(size, resample=self.resample)
        crop_h, crop_w = self.crop
        top = (image.height - crop_h) // 2
        left = (image.width - crop_w) // 2
        image = image.crop((left, top, left + crop_w, top + crop_h))
        pixels = np.asarray(image, dtype=np.float32) * (1 / 255)
        pixels = (pixels - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class VisionEncoder:
    """CLIP-ViT image tower with projection: image → unit-length embedding of `width` floats."""

    def __init__(self, model: str, revision: str | None, device, dtype):
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch
        from transformers import CLIPVisionModelWithProjection
        from transformers.utils import cached_file

        self.device, self.dtype = device, dtype
        if single_file.is_single_file(model):
            self.model, folder = single_file.clip_vision(model, dtype)
            config_file = folder / "preprocessor_config.json"
        else:
            self.model = _load(
                CLIPVisionModelWithProjection.from_pretrained,
                model,
                revision,
                "vision model",
                dtype=dtype,
            )
            config_file = _load(
                lambda m, **kw: cached_file(m, "preprocessor_config.json", **kw),
                model,
                revision,
                "vision model's preprocessor_config.json",
            )
        self.model.to(device).eval()
        self.preprocess = Preprocessing.from_config(json.loads(Path(config_file).read_text()))
        self.width = int(self.model.config.projection_dim)
        self._torch = torch

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] preprocessed pixels → [B, width] float32, L2-normalized."""
        torch = self._torch
        with torch.inference_mode():
            batch = torch.from_numpy(pixels).to(self.device, self.dtype)
            embeds = self.model(pixel_values=batch).image_embeds.float()
            embeds = torch.nn.functional.normalize(embeds, dim=-1)
        return embeds.cpu().numpy()


def _load_text_folder(model: str, revision: str | None, dtype):
    """(tokenizer, tokenizer_2, text_encoder, text_encoder_2) from a diffusers folder or hub id."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    return (
        _load(
            CLIPTokenizer.from_pretrained, model, revision, "SDXL tokenizer", subfolder="tokenizer"
        ),
        _load(
            CLIPTokenizer.from_pretrained,
            model,
            revision,
            "SDXL tokenizer_2",
            subfolder="tokenizer_2",
        ),
        _load(
            CLIPTextModel.from_pretrained,
            model,
            revision,
            "SDXL text_encoder",
            subfolder="text_encoder",
            dtype=dtype,
        ),
        _load(
            CLIPTextModelWithProjection.from_pretrained,
            model,
            revision,
            "SDXL text_encoder_2",
            subfolder="text_encoder_2",
            dtype=dtype,
        ),
    )


class SDXLTextEncoder:
    """SDXL's two CLIP text encoders: prompt → ([77, width], [pooled_width])."""

    def __init__(self, model: str, revision: str | None, device, dtype):
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        self.device, self.dtype = device, dtype
        if single_file.is_single_file(model):
            first, second, folder = single_file.sdxl_text_encoders(model, dtype)
            self.tokenizer, self.tokenizer_2 = single_file.sdxl_tokenizers(folder)
        else:
            self.tokenizer, self.tokenizer_2, first, second = _load_text_folder(
                model, revision, dtype
            )
        self.text_encoder = first.to(device).eval()
        self.text_encoder_2 = second.to(device).eval()
        self.seq_len = int(self.tokenizer.model_max_length)
        self.width = int(
            self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
        )
        self.pooled_width = int(self.text_encoder_2.config.projection_dim)
        self._torch = torch

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Tokens of each prompt with its start and end tokens, before any truncation."""
        # Long prompts are expected here (that is what is being counted): silence the length
        # warning.
        tokenizer_log = logging.getLogger("transformers.tokenization_utils_base")
        level = tokenizer_log.level
        tokenizer_log.setLevel(logging.ERROR)
        try:
            return [len(ids) for ids in self.tokenizer(prompts, truncation=False).input_ids]
        finally:
            tokenizer_log.setLevel(level)

    @property
    def widths(self) -> tuple[int, int]:
        """The two encoders' hidden widths: their states are concatenated in this order."""
        return (
            self.text_encoder.config.hidden_size,
            self.text_encoder_2.config.hidden_size,
        )

    def encode_ids(self, ids: np.ndarray, ids_2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Token ids [c, 77] for each encoder → (hidden states [c, 77, width], pooled [c,
        pooled_width]) float32: the penultimate layer of both encoders concatenated, and encoder
        2's projected end token."""
        torch = self._torch
        hidden = []
        with torch.inference_mode():
            for tokens, encoder in ((ids, self.text_encoder), (ids_2, self.text_encoder_2)):
                output = encoder(
                    torch.from_numpy(tokens).to(self.device), output_hidden_states=True
                )
                hidden.append(output.hidden_states[-2])
            pooled = output.text_embeds
            states = torch.cat(hidden, dim=-1)
        return states.float().cpu().numpy(), pooled.float().cpu().numpy()

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """([B, seq_len, width], [B, pooled_width]) float32; prompts past 77 tokens are truncated
        (as SDXL does: callers record the token count)."""
        torch = self._torch
        hidden = []
        with torch.inference_mode():
            for tokenizer, encoder in (
                (self.tokenizer, self.text_encoder),
                (self.tokenizer_2, self.text_encoder_2),
            ):
                ids = tokenizer(
                    prompts,
                    padding="max_length",
                    max_length=self.seq_len,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(self.device)
                output = encoder(ids, output_hidden_states=True)
                hidden.append(output.hidden_states[-2])
            pooled = output.text_embeds
            prompt_embeds = torch.cat(hidden, dim=-1)
        return prompt_embeds.float().cpu().numpy(), pooled.float().cpu().numpy()
