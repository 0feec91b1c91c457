"""A stand-in for the parts of ComfyUI that Luna's graph refiners call, since CI cannot fetch
ComfyUI. It is built on Luna's tiny world and implements no more than the nodes call:

- `comfy.model_base.SDXL` (its `embedder`) inside a model patcher (`model`, `model_options`,
  `clone`, `set_model_unet_function_wrapper`, `get_model_object`, `load_device`);
- `comfy.sample.sample` with ComfyUI's signature (euler only, the sampler the exactness tests use),
  `prepare_noise` and `fix_empty_latent_channels`;
- the CONDITIONING layout: `[[tokens [B, L, D], {"pooled_output": [B, P]}]]`, the `y` vector of
  pooled then the size embeddings, cond and uncond lengths met by repetition;
- `comfy.samplers.KSampler.SAMPLERS`/`SCHEDULERS`, `comfy.utils.ProgressBar`,
  `comfy.model_management` (interrupt, OOM_EXCEPTION, soft_empty_cache);
- a CLIP's `tokenize` / `encode_from_tokens(..., return_pooled=True)` and a VAE's `encode` /
  `decode` on BHWC pictures in [0, 1].

Its size embedder is the identity (the tiny UNet embeds the six numbers itself); a real SDXL's is
Timestep(256). scripts/comfyui-check runs the same nodes against a real ComfyUI.
"""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import torch

INTERRUPTED = {"flag": False}
BARS: list = []


class ProgressBar:
    def __init__(self, total):
        self.total, self.done = total, 0
        BARS.append(self)

    def update(self, value):
        self.done += value

    def update_absolute(self, value, total=None, preview=None):
        self.done, self.total = value, total or self.total


class Interrupted(Exception):
    pass


def _throw_if_interrupted():
    if INTERRUPTED["flag"]:
        raise Interrupted("Processing interrupted")


class SDXL:
    """The double's SDXL: Luna's tiny UNet, EPS prediction on SDXL's noise schedule."""

    def __init__(self, unet):
        self.unet = unet
        self.embedder = lambda value: value.to(torch.float32)  # the UNet embeds sizes itself
        self.seen_y: list = []
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas = torch.cumprod(1 - betas, 0)
        self.sigmas = ((1 - alphas) / alphas) ** 0.5

    def timestep(self, sigma: float) -> float:
        logs = self.sigmas.log().numpy()
        return float(np.interp(math.log(sigma), logs, np.arange(1000)))

    def apply_model(self, x, t, c_crossattn=None, y=None, **_):
        self.seen_y.append(y.clone())
        dtype = self.unet.dtype
        sigma = t.to(torch.float64)[:, None, None, None]
        scaled = (x / (sigma**2 + 1) ** 0.5).to(dtype)
        steps = torch.tensor([self.timestep(float(s)) for s in t], dtype=dtype)
        eps = self.unet(
            scaled,
            steps,
            encoder_hidden_states=c_crossattn.to(dtype),
            added_cond_kwargs={"text_embeds": y[:, :-6].to(dtype), "time_ids": y[:, -6:].to(dtype)},
        ).sample
        return x - eps.to(x.dtype) * sigma.to(x.dtype)


class LatentFormat:
    latent_channels = 4
    latent_dimensions = 2

    def __init__(self, scale: float):
        self.scale_factor = scale


class ModelPatcher:
    def __init__(self, model, latent_format, model_options=None):
        self.model, self.latent_format = model, latent_format
        self.model_options = dict(model_options or {})
        self.load_device = torch.device("cpu")

    def clone(self):
        return ModelPatcher(self.model, self.latent_format, self.model_options)

    def set_model_unet_function_wrapper(self, wrapper):
        self.model_options["model_function_wrapper"] = wrapper

    def get_model_object(self, name):
        return {"latent_format": self.latent_format}[name]


def prepare_noise(latent_image, seed, noise_inds=None):
    generator = torch.manual_seed(seed)
    return torch.randn(latent_image.size(), dtype=latent_image.dtype, generator=generator)


def _repeat_to_lcm(tokens: list) -> list:
    chunks = [t.shape[1] // 77 for t in tokens]
    length = math.lcm(*chunks) * 77
    return [t.repeat(1, length // t.shape[1], 1) for t in tokens]


def _y(model, conditioning, latent):
    tokens, extra = conditioning[0]
    height = extra.get("height", latent.shape[2] * 8)
    width = extra.get("width", latent.shape[3] * 8)
    tail = torch.cat(
        [model.embedder(torch.Tensor([v])) for v in (height, width, 0, 0, height, width)]
    )
    pooled = extra["pooled_output"]
    return tokens, torch.cat([pooled, tail.expand(pooled.shape[0], -1).to(pooled.dtype)], 1)


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
           denoise=1.0, disable_noise=False, start_step=None, last_step=None,
           force_full_denoise=False, noise_mask=None, sigmas=None, callback=None,
           disable_pbar=False, seed=None):  # fmt: skip
    if sampler_name != "euler":
        raise NotImplementedError("the ComfyUI double implements the euler sampler only")
    if len(positive) != 1 or len(negative) != 1:
        raise NotImplementedError("the ComfyUI double takes one CONDITIONING entry per side")
    inner = model.model
    total = steps if denoise >= 1 else int(steps / denoise)
    ts = torch.linspace(999, 0, total + 1)[:-1]
    sigma_list = [float(inner.sigmas[int(round(float(t)))]) for t in ts] + [0.0]
    sigma_list = sigma_list[-(steps + 1) :]
    scale = model.latent_format.scale_factor
    x = latent_image * scale + noise.to(latent_image.dtype) * sigma_list[0]
    pos_tokens, pos_y = _y(inner, positive, latent_image)
    neg_tokens, neg_y = _y(inner, negative, latent_image)
    crossattn = torch.cat(_repeat_to_lcm([pos_tokens, neg_tokens]))
    y = torch.cat([pos_y, neg_y])
    wrapper = model.model_options.get("model_function_wrapper")
    for step, (sigma, sigma_next) in enumerate(zip(sigma_list[:-1], sigma_list[1:])):
        batch = torch.cat([x, x])
        t = torch.full((batch.shape[0],), sigma, dtype=x.dtype)
        c = {"c_crossattn": crossattn.to(x.dtype), "y": y.to(x.dtype)}
        if wrapper is not None:
            out = wrapper(inner.apply_model, {"input": batch, "timestep": t, "c": c,
                                              "cond_or_uncond": [0, 1]})  # fmt: skip
        else:
            out = inner.apply_model(batch, t, **c)
        cond, uncond = out.chunk(2)
        denoised = uncond + (cond - uncond) * cfg
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
        if callback is not None:
            callback(step, denoised, x, steps)
    return x / scale


def fix_empty_latent_channels(model, latent_image):
    return latent_image


class CLIP:
    """A graph's CLIP: Luna's tiny SDXL text encoders reading ComfyUI's prompt rules."""

    def __init__(self, encoder, dtype):
        self.encoder, self.dtype, self.encoded = encoder, dtype, []

    def tokenize(self, text):
        return {"text": text}

    def encode_from_tokens(self, tokens, return_pooled=False):
        from luna_core.prompts.encode import encode_parsed
        from luna_core.prompts.parsers import parse

        self.encoded.append(tokens["text"])
        hidden, pooled = encode_parsed(self.encoder, parse(tokens["text"], "comfy"))
        hidden = torch.from_numpy(hidden)[None].to(self.dtype)
        return (hidden, torch.from_numpy(pooled)[None].to(self.dtype)) if return_pooled else hidden


class VAE:
    def __init__(self, vae):
        self.vae = vae

    def encode(self, pixels):
        inputs = pixels[..., :3].permute(0, 3, 1, 2).to(self.vae.dtype) * 2 - 1
        return self.vae.encode(inputs).latent_dist.mean

    def decode(self, latent):
        pixels = self.vae.decode(latent.to(self.vae.dtype)).sample
        return ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def install(monkeypatch) -> None:
    """ComfyUI's module names, for this test only, with the double's parts in them."""
    parts = {
        "comfy": {},
        "comfy.model_base": {"SDXL": SDXL},
        "comfy.sample": {
            "sample": sample,
            "prepare_noise": prepare_noise,
            "fix_empty_latent_channels": fix_empty_latent_channels,
        },
        "comfy.samplers": {
            "KSampler": types.SimpleNamespace(
                SAMPLERS=["euler", "euler_ancestral", "dpmpp_2m"], SCHEDULERS=["normal", "karras"]
            )
        },
        "comfy.utils": {"ProgressBar": ProgressBar},
        "comfy.model_management": {
            "throw_exception_if_processing_interrupted": _throw_if_interrupted,
            "OOM_EXCEPTION": torch.OutOfMemoryError,
            "soft_empty_cache": lambda: None,
        },
    }
    root = types.ModuleType("comfy")
    monkeypatch.setitem(sys.modules, "comfy", root)
    for name, values in parts.items():
        if name == "comfy":
            continue
        module = types.ModuleType(name)
        module.__dict__.update(values)
        monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(root, name.split(".")[1], module, raising=False)
    INTERRUPTED["flag"] = False


def models(tiny_root, dtype=torch.float32):
    """(MODEL, CLIP, VAE) of the double over the tiny world at `tiny_root`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from luna_core.models.encoders import SDXLTextEncoder
    from luna_core.models.profiles import tiny_profile

    folder = tiny_profile(tiny_root).sdxl_model
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").to(dtype).eval()
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").to(dtype).eval()
    encoder = SDXLTextEncoder(folder, None, torch.device("cpu"), torch.float32)
    patcher = ModelPatcher(SDXL(unet), LatentFormat(float(vae.config.scaling_factor)))
    return patcher, CLIP(encoder, dtype), VAE(vae)
