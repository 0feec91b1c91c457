"""The tiny world's text-conditioned UNet: its training examples (latents of the sample pictures
with their prompts) and its training."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from luna_core.models.tiny_world import Progress, optimize
from luna_core.samples.pictures import draw_picture, random_prompt


def unet_examples(count: int, seed: int, tile: int):
    """(prompts, [N, H, W, 3] pictures, [N, 6] SDXL size/crop ids): half whole pictures at the
    tile's size, half tiles cut from larger pictures at their place (as the chess refiner cuts
    them)."""
    rng = random.Random(seed)
    prompts, pictures, ids = [], [], []
    for n in range(count):
        spec = random_prompt(rng, long=rng.random() < 0.15)
        if n % 2 == 0:
            side = rng.choice((64, 96, 128))
            picture = draw_picture(spec, rng.randrange(2**31), (side, side))
            picture = (
                picture.resize((tile, tile), Image.Resampling.BICUBIC) if side != tile else picture
            )
            ids.append((side, side, 0, 0, tile, tile))
        else:
            side = rng.choice((128, 192, 256))
            picture = draw_picture(spec, rng.randrange(2**31), (side, side))
            top, left = rng.randrange(side - tile + 1), rng.randrange(side - tile + 1)
            picture = picture.crop((left, top, left + tile, top + tile))
            ids.append((side, side, top, left, tile, tile))
        prompts.append(spec.prompt)
        pictures.append(np.asarray(picture))
    return prompts, np.stack(pictures), np.asarray(ids, np.float32)


def train_unet(
    unet, vae, text_encoder, scheduler_config: dict, recipe: dict, seed: int, progress: Progress
) -> None:
    """Epsilon prediction on the VAE's latents under SDXL's noise schedule, conditioned as SDXL is;
    a share of prompts is dropped to SDXL's zeros (the sampler's unconditional side)."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch
    from diffusers import DDPMScheduler

    prompts, pictures, time_ids = unet_examples(recipe["pictures"], seed + 5, recipe["tile"])
    pixels = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1
    scale = vae.config.scaling_factor
    with torch.no_grad():
        latents = (
            torch.cat(
                [
                    vae.encode(pixels[i : i + 256]).latent_dist.mean
                    for i in range(0, len(pixels), 256)
                ]
            )
            * scale
        )
        mirrored = (
            torch.cat(
                [
                    vae.encode(pixels[i : i + 256].flip(3)).latent_dist.mean
                    for i in range(0, len(pixels), 256)
                ]
            )
            * scale
        )
    hidden, pooled = text_encoder.encode(prompts)
    hidden, pooled = torch.from_numpy(hidden), torch.from_numpy(pooled)
    time_ids = torch.from_numpy(time_ids)
    alphas = DDPMScheduler.from_config(scheduler_config).alphas_cumprod
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe["lr"], weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed + 6)
    unet.train()
    batch = recipe["batch"]
    for step in range(recipe["steps"]):
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        # whole pictures only
        flip = (torch.rand(batch, generator=generator) < 0.5) & (time_ids[index, 3] == 0)
        clean = torch.where(flip[:, None, None, None], mirrored[index], latents[index])
        states, vectors = hidden[index].clone(), pooled[index].clone()
        drop = torch.rand(batch, generator=generator) < recipe["drop_prompt"]
        states[drop], vectors[drop] = 0.0, 0.0
        t = torch.randint(0, len(alphas), (batch,), generator=generator)
        noise = torch.randn(clean.shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * clean + (1 - a).sqrt() * noise
        prediction = unet(
            noisy,
            t,
            encoder_hidden_states=states,
            added_cond_kwargs={"text_embeds": vectors, "time_ids": time_ids[index]},
        ).sample
        # Min-SNR weighting (Hang et al., 2023): the many nearly clean steps, where the prompt
        # hardly matters, weigh less; the noisy ones, where the prompt decides the picture, weigh
        # more.
        snr = a.flatten() / (1 - a.flatten())
        weight = torch.clamp(snr, max=recipe["min_snr"]) / snr
        loss = (weight * ((prediction - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        optimize(optimizer, loss, recipe, step)
        progress.update("UNet", 1)
    unet.eval()
