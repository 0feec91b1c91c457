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

from luna_core.ask.mixing import aligned
from luna_core.errors import LunaConfigError
from luna_core.models import single_file
from luna_core.models.encoders import _load
from luna_core.refine.block_conditioning import block_conditioning
from luna_core.refine.lora import LoraAdapter, RowLoras
from luna_core.refine.memory import ChunkPlan, ModelSizes, default_budget_mb, plan_chunks
from luna_core.refine.options import SamplerSettings

log = logging.getLogger(__name__)


@dataclass
class ItemConditioning:
    """What one tile or crop is conditioned on (numpy float32, without a batch axis)."""

    prompt_embeds: np.ndarray  # [77, D]
    pooled_prompt_embeds: np.ndarray  # [P]
    negative_prompt_embeds: np.ndarray
    negative_pooled_prompt_embeds: np.ndarray
    info: dict = field(default_factory=dict)
    # Per-block conditioning: what the composition blocks (settings.composition_blocks) see instead
    # of the item's own tokens, e.g. the whole image's answer; None: the item's own everywhere.
    composition_embeds: np.ndarray | None = None
    composition_negative_embeds: np.ndarray | None = None


@contextlib.contextmanager
def _quiet_loaders():
    """diffusers' and transformers' loading notes (optional packages, dtype casts) are not the
    user's to act on."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
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


# Luna gives every item its conditioning: the pipeline holds no text encoder or tokenizer
NO_TEXT = dict(text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None)


def _pipeline_from_single_file(model: str, dtype):
    """The img2img pipeline around a single-file checkpoint's UNet and VAE, with the scheduler of
    the matched configuration (no text encoders: Luna gives the conditioning)."""
    # torch and the model libraries take about a second to import: only code that runs a model
    # pays for it
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline

    unet, vae, folder = single_file.sdxl_unet_and_vae(model, dtype)
    scheduler = EulerDiscreteScheduler.from_pretrained(str(folder), subfolder="scheduler")
    return StableDiffusionXLImg2ImgPipeline(vae=vae, unet=unet, scheduler=scheduler, **NO_TEXT)


class SDXLSampler:
    """SDXL's UNet, VAE and scheduler, loaded through diffusers' `from_pretrained` (a hub id or a
    local folder laid out like stabilityai/stable-diffusion-xl-base-1.0; text encoders are not
    loaded)."""

    def __init__(self, model: str, revision: str | None, device, dtype):
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.disable_progress_bar()
        self.device, self.dtype = device, dtype
        # The pipeline object is kept for diffusers' own IP-Adapter loading code; its loop is not
        # used.
        with _quiet_loaders():
            # torch and the model libraries take about a second to import: only code that runs a
            # model pays for it
            from diffusers import StableDiffusionXLImg2ImgPipeline

            if single_file.is_single_file(model):
                self.pipe = _pipeline_from_single_file(model, dtype)
            else:
                self.pipe = _load(
                    StableDiffusionXLImg2ImgPipeline.from_pretrained,
                    model,
                    revision,
                    "SDXL pipeline",
                    dtype=dtype,
                    low_cpu_mem_usage=False,
                    **NO_TEXT,
                )
        self.pipe.to(device)
        if dtype in (torch.float16, torch.bfloat16):
            self.pipe.vae.to(dtype=torch.float32)  # SDXL's VAE overflows in half precision
        self.unet, self.vae = self.pipe.unet, self.pipe.vae
        self.scheduler_config = self.pipe.scheduler.config
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.pixel_multiple = max(
            8, self.vae_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        )
        self.native_size = int(self.unet.config.sample_size) * self.vae_factor
        self.ip_adapter: str | None = None
        self._row_loras: RowLoras | None = None

    # ------------------------------------------------------------ IP-Adapter

    def load_ip_adapter(self, path: str | Path, weight: float) -> None:
        """An IP-Adapter (a .safetensors file with image_encoder/ beside it, or a folder holding
        both), loaded through diffusers' `load_ip_adapter`."""
        path = Path(path).expanduser()
        if path.is_dir():
            weights = sorted(path.glob("*.safetensors"))
            if len(weights) != 1:
                raise LunaConfigError(
                    f"IP-Adapter folder {path} must hold exactly one .safetensors file"
                )
            path = weights[0]
        if not path.is_file():
            raise LunaConfigError(f"no IP-Adapter at {path}")
        if not (path.parent / "image_encoder").is_dir():
            raise LunaConfigError(f"IP-Adapter {path} has no image_encoder/ folder beside it")
        try:
            with _quiet_loaders():
                self.pipe.load_ip_adapter(
                    str(path.parent),
                    subfolder="",
                    weight_name=path.name,
                    image_encoder_folder="image_encoder",
                    low_cpu_mem_usage=False,
                )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise LunaConfigError(
                f"IP-Adapter {path} cannot be loaded for this UNet: {str(exc).splitlines()[0]}"
            ) from None
        self.pipe.image_encoder.to(self.device)
        self.pipe.set_ip_adapter_scale(weight)
        self.ip_adapter = str(path)

    def ip_image_embeds(self, images: list) -> np.ndarray:
        """[N, D] IP-Adapter image embeddings, one per image (computed one image per row, as CLIP
        does)."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        pixels = self.pipe.feature_extractor(images, return_tensors="pt").pixel_values
        encoder = self.pipe.image_encoder
        with torch.no_grad():
            embeds = encoder(pixels.to(self.device, next(encoder.parameters()).dtype)).image_embeds
        return embeds.float().cpu().numpy()

    # ------------------------------------------------------------ LoRAs and the memory plan

    @property
    def row_loras(self) -> RowLoras:
        if self._row_loras is None:
            self._row_loras = RowLoras(self.unet)
        return self._row_loras

    def load_loras(self, files: dict[str, Path]) -> list[LoraAdapter]:
        """LoRA files (name → path), read and checked against this UNet, kept beside it (never
        fused)."""
        return [self.row_loras.load(name, path) for name, path in files.items()]

    def plan(self, items: int, height: int, width: int, settings: SamplerSettings) -> ChunkPlan:
        """How a pass of `items` pictures of height x width is split to fit the memory budget."""
        budget = settings.memory_budget_mb or default_budget_mb(self.device)
        bytes_of = lambda module: next(module.parameters()).element_size()  # noqa: E731
        sizes = ModelSizes(
            int(self.vae.config.block_out_channels[0]),
            bytes_of(self.vae),
            self.vae_factor,
            tuple(self.unet.config.block_out_channels),
            bytes_of(self.unet),
        )
        return plan_chunks(
            items,
            height,
            width,
            sizes,
            2 if settings.guidance_scale > 1.0 else 1,
            budget,
            settings.batch_size,
        )

    # ------------------------------------------------------------ the batched loop

    def refine(
        self,
        images: list,
        conditions: list[ItemConditioning],
        time_ids: np.ndarray,
        seeds: list[int],
        settings: SamplerSettings,
        ip_embeds: np.ndarray | None = None,
        on_chunk: Callable[[int], None] | None = None,
        loras: list | None = None,
    ) -> list[np.ndarray]:
        """Refine equally sized RGB images ([H, W, 3] uint8 arrays or PIL images), item i with
        conditions[i], time_ids[i], seeds[i] and its LoRA set loras[i] (names loaded by
        `load_loras`, with weights); returns [H, W, 3] float32 arrays in [-1, 1] (unrounded, so
        results can be blended and compared exactly). The memory plan (`plan`) says how many
        items go through the VAE and the UNet at once: all of them unless the budget (or an
        explicit batch size) says otherwise."""
        if not (len(images) == len(conditions) == len(time_ids) == len(seeds)):
            raise ValueError("one conditioning, time_ids row and seed per image")
        if loras is not None and len(loras) != len(images):
            raise ValueError("one LoRA set per image (empty for none)")
        if ip_embeds is not None and self.ip_adapter is None:
            raise ValueError("IP-Adapter embeddings given but no IP-Adapter is loaded")
        if not images:
            return []
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        pixels = [
            np.asarray(
                image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32
            )
            for image in images
        ]
        plan = self.plan(len(images), *pixels[0].shape[:2], settings)
        vae_dtype = next(self.vae.parameters()).dtype
        with torch.no_grad():
            latents = []
            for start in range(0, len(pixels), plan.vae_items):
                batch = torch.from_numpy(np.stack(pixels[start : start + plan.vae_items]))
                batch = (batch.permute(0, 3, 1, 2) / 127.5 - 1.0).to(self.device, vae_dtype)
                # The latent's mean (no VAE sampling noise): the tile's own content,
                # deterministically.
                latents.append(
                    self.vae.encode(batch).latent_dist.mean * self.vae.config.scaling_factor
                )
            latents = torch.cat(latents)
            denoised = []
            for start in range(0, len(images), plan.unet_items):
                end = start + plan.unet_items
                denoised.append(
                    self._denoise(
                        latents[start:end],
                        conditions[start:end],
                        time_ids[start:end],
                        seeds[start:end],
                        settings,
                        None if ip_embeds is None else ip_embeds[start:end],
                        None if loras is None else loras[start:end],
                    )
                )
                if on_chunk:
                    on_chunk(min(end, len(images)))
            denoised = torch.cat(denoised)
            out: list[np.ndarray] = []
            for start in range(0, len(images), plan.vae_items):
                chunk = (
                    denoised[start : start + plan.vae_items].to(vae_dtype)
                    / self.vae.config.scaling_factor
                )
                decoded = self.vae.decode(chunk).sample
                out += list(decoded.clamp(-1, 1).permute(0, 2, 3, 1).float().cpu().numpy())
        return out

    def _denoise(
        self, latents, conditions, time_ids, seeds, settings: SamplerSettings, ip_embeds, loras
    ):
        """One UNet chunk: noise each item's latent by its own seed and run the schedule's tail."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch
        from diffusers import EulerDiscreteScheduler

        device, dtype = self.device, self.dtype
        batch = len(conditions)

        def stacked(arrays) -> torch.Tensor:
            return torch.from_numpy(np.stack(arrays).astype(np.float32)).to(device, dtype)

        # Items of different chunk counts meet at one token length by repetition
        # (attention-equivalent); the composition blocks' conditioning (per-block) meets the same
        # length.
        composed = any(c.composition_embeds is not None for c in conditions)
        token_sets = [c.prompt_embeds for c in conditions] + [
            c.negative_prompt_embeds for c in conditions
        ]
        if composed:
            token_sets += [
                c.composition_embeds if c.composition_embeds is not None else c.prompt_embeds
                for c in conditions
            ]
            token_sets += [
                c.composition_negative_embeds
                if c.composition_embeds is not None
                else c.negative_prompt_embeds
                for c in conditions
            ]
        tokens = aligned(token_sets)
        embeds, negative = stacked(tokens[:batch]), stacked(tokens[batch : 2 * batch])
        pooled = stacked([c.pooled_prompt_embeds for c in conditions])
        negative_pooled = stacked([c.negative_pooled_prompt_embeds for c in conditions])
        times = torch.as_tensor(np.asarray(time_ids, dtype=np.float32), device=device, dtype=dtype)
        guided = settings.guidance_scale > 1.0
        composition = None
        if composed:
            composition, composition_negative = (
                stacked(tokens[2 * batch : 3 * batch]),
                stacked(tokens[3 * batch :]),
            )
            composition = torch.cat([composition_negative, composition]) if guided else composition
        if guided:  # negatives first, as diffusers orders them; item i is row i and row batch + i
            embeds, pooled = torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])
            times = torch.cat([times, times])
        added = {"text_embeds": pooled, "time_ids": times}
        if ip_embeds is not None:
            image = torch.from_numpy(np.asarray(ip_embeds, dtype=np.float32)).to(device, dtype)[
                :, None, :
            ]
            added["image_embeds"] = [
                torch.cat([torch.zeros_like(image), image]) if guided else image
            ]
        rows = None
        if loras is not None and any(loras):  # both guidance rows of an item carry its LoRAs
            rows = [tuple(s) for s in loras] * (2 if guided else 1)

        scheduler = EulerDiscreteScheduler.from_config(self.scheduler_config)
        scheduler.set_timesteps(settings.steps, device=device)
        start = settings.steps - min(
            settings.steps, max(1, int(round(settings.steps * settings.strength)))
        )
        timesteps = scheduler.timesteps[start * scheduler.order :]
        scheduler.set_begin_index(start * scheduler.order)
        noise = torch.stack(
            [
                torch.randn(latents.shape[1:], generator=torch.Generator().manual_seed(s))
                for s in seeds
            ]
        ).to(device, latents.dtype)
        latents = scheduler.add_noise(latents, noise, timesteps[:1].repeat(batch)).to(dtype)
        with contextlib.ExitStack() as stack:
            if rows is not None:
                stack.enter_context(self.row_loras.applied(rows))
            if composition is not None:
                stack.enter_context(
                    block_conditioning(self.unet, composition, settings.composition_blocks)
                )
            for t in timesteps:
                model_input = torch.cat([latents, latents]) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                prediction = self.unet(
                    model_input, t, encoder_hidden_states=embeds, added_cond_kwargs=added
                ).sample
                if guided:
                    uncond, cond = prediction.chunk(2)
                    prediction = uncond + settings.guidance_scale * (cond - uncond)
                latents = scheduler.step(prediction, t, latents).prev_sample.to(dtype)
        return latents


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to [0, 255] floats (rounded only when the image is finally saved)."""
    return (np.asarray(decoded, dtype=np.float32) + 1.0) * 127.5
