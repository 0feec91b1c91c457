"""One SDXL img2img sampler call over many items, each with its own conditioning.

"Latent[i] sees Embed[i]": item i of a batch carries its own prompt embeddings, pooled embedding,
negatives, SDXL micro-conditioning (`time_ids`: original size, crop top-left, target size) and,
optionally, its own IP-Adapter image embedding; nothing is averaged or broadcast across items.
The stock diffusers pipeline takes one `add_time_ids` tuple per call and attaches a list of
IP-Adapter images to every item (diffusers issue 9813), so the denoising loop is written here,
over diffusers' own UNet, VAE and scheduler.

Each item's noise comes from its own generator seeded by (seed, pass, item index): an item refined
inside a batch equals the same item refined alone (up to float rounding of batched kernels).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from luna_core.errors import LunaConfigError
from luna_core.mixing import aligned
from luna_core.models.encoders import _load
from luna_core.refine.settings import SamplerSettings

log = logging.getLogger(__name__)


@dataclass
class ItemConditioning:
    """What one tile or crop is conditioned on (numpy float32, without a batch axis)."""

    prompt_embeds: np.ndarray  # [77, D]
    pooled_prompt_embeds: np.ndarray  # [P]
    negative_prompt_embeds: np.ndarray
    negative_pooled_prompt_embeds: np.ndarray
    info: dict = field(default_factory=dict)


@contextlib.contextmanager
def _quiet_loaders():
    """diffusers' and transformers' loading notes (optional packages, dtype casts) are not the user's to act on."""
    # torch and the model libraries take about a second to import: only code that runs a model pays for it
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.get_verbosity(), transformers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(before[0])
        transformers_logging.set_verbosity(before[1])


def item_seed(seed: int, pass_index: int, item_index: int) -> int:
    """The noise seed of one item: a function of (seed, pass, item) alone, never of the batch."""
    return (int(seed) * 1_000_003 + pass_index * 10_007 + item_index) % (2**63 - 1)


class SDXLSampler:
    """SDXL's UNet, VAE and scheduler, loaded through diffusers' `from_pretrained` (a hub id or a local
    folder laid out like stabilityai/stable-diffusion-xl-base-1.0; text encoders are not loaded)."""

    def __init__(self, model: str, revision: str | None, device, dtype):
        # torch and the model libraries take about a second to import: only code that runs a model pays for it
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        self.device, self.dtype = device, dtype
        # The pipeline object is kept for diffusers' own IP-Adapter loading code; its loop is not used.
        with _quiet_loaders():
            # torch and the model libraries take about a second to import: only code that runs a model pays for it
            from diffusers import StableDiffusionXLImg2ImgPipeline

            self.pipe = _load(StableDiffusionXLImg2ImgPipeline.from_pretrained, model, revision, "SDXL pipeline",
                              text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
                              dtype=dtype, low_cpu_mem_usage=False)
        self.pipe.to(device)
        if dtype in (torch.float16, torch.bfloat16):
            self.pipe.vae.to(dtype=torch.float32)  # SDXL's VAE overflows in half precision
        self.unet, self.vae = self.pipe.unet, self.pipe.vae
        self.scheduler_config = self.pipe.scheduler.config
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.pixel_multiple = max(8, self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1))
        self.native_size = int(self.unet.config.sample_size) * self.vae_factor
        self.ip_adapter: str | None = None

    # ------------------------------------------------------------ IP-Adapter

    def load_ip_adapter(self, path: str | Path, weight: float) -> None:
        """An IP-Adapter (a .safetensors file with image_encoder/ beside it, or a folder holding both),
        loaded through diffusers' `load_ip_adapter`."""
        path = Path(path).expanduser()
        if path.is_dir():
            weights = sorted(path.glob("*.safetensors"))
            if len(weights) != 1:
                raise LunaConfigError(f"IP-Adapter folder {path} must hold exactly one .safetensors file")
            path = weights[0]
        if not path.is_file():
            raise LunaConfigError(f"no IP-Adapter at {path}")
        if not (path.parent / "image_encoder").is_dir():
            raise LunaConfigError(f"IP-Adapter {path} has no image_encoder/ folder beside it")
        try:
            with _quiet_loaders():
                self.pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name,
                                          image_encoder_folder="image_encoder", low_cpu_mem_usage=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LunaConfigError(f"IP-Adapter {path} cannot be loaded for this UNet: {str(exc).splitlines()[0]}") from None
        self.pipe.image_encoder.to(self.device)
        self.pipe.set_ip_adapter_scale(weight)
        self.ip_adapter = str(path)

    def ip_image_embeds(self, images: list) -> np.ndarray:
        """[N, D] IP-Adapter image embeddings, one per image (computed one image per row, as CLIP does)."""
        # torch and the model libraries take about a second to import: only code that runs a model pays for it
        import torch

        pixels = self.pipe.feature_extractor(images, return_tensors="pt").pixel_values
        encoder = self.pipe.image_encoder
        with torch.no_grad():
            embeds = encoder(pixels.to(self.device, next(encoder.parameters()).dtype)).image_embeds
        return embeds.float().cpu().numpy()

    # ------------------------------------------------------------ the batched loop

    def refine(self, images: list, conditions: list[ItemConditioning], time_ids: np.ndarray,
               seeds: list[int], settings: SamplerSettings, ip_embeds: np.ndarray | None = None,
               on_chunk: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """Refine equally sized RGB images ([H, W, 3] uint8 arrays or PIL images), item i with
        conditions[i], time_ids[i] and seeds[i]; returns [H, W, 3] float32 arrays in [-1, 1] (unrounded,
        so results can be blended and compared exactly). Items go through the UNet `settings.batch_size`
        at a time (all at once when that is at least their number)."""
        if not (len(images) == len(conditions) == len(time_ids) == len(seeds)):
            raise ValueError("one conditioning, time_ids row and seed per image")
        if ip_embeds is not None and self.ip_adapter is None:
            raise ValueError("IP-Adapter embeddings given but no IP-Adapter is loaded")
        out: list[np.ndarray] = []
        for start in range(0, len(images), settings.batch_size):
            end = start + settings.batch_size
            out += self._refine_chunk(images[start:end], conditions[start:end], time_ids[start:end],
                                      seeds[start:end], settings, None if ip_embeds is None else ip_embeds[start:end])
            if on_chunk:
                on_chunk(min(end, len(images)))
        return out

    def _refine_chunk(self, images, conditions, time_ids, seeds, settings: SamplerSettings, ip_embeds):
        # torch and the model libraries take about a second to import: only code that runs a model pays for it
        import torch
        from diffusers import EulerDiscreteScheduler

        device, dtype = self.device, self.dtype
        pixels = torch.from_numpy(np.stack([np.asarray(image.convert("RGB") if hasattr(image, "convert") else image,
                                                       dtype=np.float32) for image in images]))
        vae_dtype = next(self.vae.parameters()).dtype
        pixels = (pixels.permute(0, 3, 1, 2) / 127.5 - 1.0).to(device, vae_dtype)
        batch = len(images)

        def stacked(arrays) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(device, dtype)

        # Items of different chunk counts meet at one token length by repetition (attention-equivalent).
        tokens = aligned([c.prompt_embeds for c in conditions] + [c.negative_prompt_embeds for c in conditions])
        embeds, negative = stacked(tokens[: len(conditions)]), stacked(tokens[len(conditions):])
        pooled = stacked([c.pooled_prompt_embeds for c in conditions])
        negative_pooled = stacked([c.negative_pooled_prompt_embeds for c in conditions])
        times = torch.as_tensor(np.asarray(time_ids, dtype=np.float32), device=device, dtype=dtype)
        guided = settings.guidance_scale > 1.0
        if guided:  # negatives first, as diffusers orders them; item i is row i and row batch + i
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
            times = torch.cat([times, times])
        added = {"text_embeds": pooled, "time_ids": times}
        if ip_embeds is not None:
            image = torch.from_numpy(np.asarray(ip_embeds, dtype=np.float32)).to(device, dtype)[:, None, :]
            added["image_embeds"] = [torch.cat([torch.zeros_like(image), image]) if guided else image]

        scheduler = EulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(settings.steps, device=device)
        start = settings.steps - min(settings.steps, max(1, int(round(settings.steps * settings.strength))))
        timesteps = scheduler.timesteps[start * scheduler.order:]
        scheduler.set_begin_index(start * scheduler.order)
        with torch.no_grad():
            # The latent's mean (no VAE sampling noise): the tile's own content, deterministically.
            latents = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
            noise = torch.stack([torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(s))
                                 for s in seeds]).to(device, latents.dtype)
            latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch)).to(dtype)
            for t in timesteps:
                model_input = torch.cat([latents, latents]) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                prediction = self.unet(model_input, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
                if guided:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + settings.guidance_scale * (cond - uncond)
                latents = scheduler.step(prediction, t, latents).prev_sample.to(dtype)
            decoded = self.vae.decode(latents.to(vae_dtype) / self.vae.config.scaling_factor).sample
        return list(decoded.clamp(-1, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float32))


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to [0, 255] floats (rounded only when the image is finally saved)."""
    return (np.asarray(decoded, dtype=np.float32) + 1.0) * 127.5
