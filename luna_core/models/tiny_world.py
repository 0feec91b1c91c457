"""The tiny world: the `tiny` profile's models trained on the sample generator's pictures and
prompts.

The sample generator draws a picture from its prompt (a coloured subject on a patterned background,
moved by the seed). That world is small enough to learn on two cores in minutes, so the tiny models
are trained once per machine, deterministically from the recipe's seed, never on a user's library:

1. the CLIP pair: the vision tower (and the second text encoder's projection, which gives SDXL's
   pooled embedding) trained contrastively, so image and text embeddings share a space;
2. the VAE, an autoencoder (4x down, 4 latent channels) on crops of pictures at the demo's sizes;
3. the UNet, an SDXL-style epsilon denoiser on the VAE's latents, conditioned on both text encoders'
   hidden states, the pooled embedding and the size/crop ids, with the prompt dropped for
   classifier-free guidance. Text encoders' transformers keep their fixed-seed random weights.

A check of the method on generated shapes, not of SDXL quality.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from luna_core.home.settings import environment_settings
from luna_core.samples.pictures import draw_picture, random_prompt

# Everything that decides the weights. Its hash names the machine cache's folder: change a number
# here (or the architecture in luna_core.models.tiny) and bump `version`, and every machine
# retrains.
RECIPE = {
    "version": "3.0",
    "seed": 0,
    "clip": {
        "pictures": 6000,
        "steps": 2600,
        "batch": 128,
        "lr": 2e-3,
        "long_share": 0.15,
        "hard_group": 16,
        "hard_every": 3,
    },
    "vae": {
        "pictures": 1500,
        "sizes": [64, 96, 128, 192, 256],
        "steps": 450,
        "batch": 32,
        "crop": 48,
        "lr": 2e-3,
        "kl": 1e-6,
    },
    "unet": {
        "pictures": 4000,
        "steps": 1000,
        "batch": 32,
        "lr": 2e-3,
        "drop_prompt": 0.1,
        "tile": 64,
        "min_snr": 5.0,
    },
}
IMAGE_SIZE = 64  # the vision tower's input, and the UNet's training tile
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TEXT_COMMON = dict(
    vocab_size=49408,
    max_position_embeddings=77,
    num_hidden_layers=2,
    num_attention_heads=2,
    bos_token_id=49406,
    eos_token_id=49407,
    hidden_act="gelu",
)
# The models' shapes (part of the recipe hash). The vision embedding has the pooled width, so images
# and prompts share one space; GroupNorm groups of 4 channels keep a flat picture's colour (a group
# per channel would normalize it away); the VAE downsamples 4x without mid-block attention.
ARCHITECTURE = {
    "vision": dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=8,
        projection_dim=48,
    ),
    "text_encoder": dict(hidden_size=32, intermediate_size=64, pad_token_id=49407),
    "text_encoder_2": dict(
        hidden_size=64, intermediate_size=128, projection_dim=48, pad_token_id=0
    ),
    "vae": dict(
        block_out_channels=[16, 32, 32],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 3,
        up_block_types=["UpDecoderBlock2D"] * 3,
        layers_per_block=1,
        sample_size=IMAGE_SIZE,
        norm_num_groups=4,
        mid_block_add_attention=False,
    ),
    "unet": dict(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=[32, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        attention_head_dim=[2, 4],
        use_linear_projection=True,
        cross_attention_dim=32 + 64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=48 + 6 * 8,
        norm_num_groups=8,
    ),
    "scheduler": dict(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    ),
}


def recipe_hash(recipe: dict | None = None) -> str:
    """The cache's key: the recipe and the architectures, which together decide the weights."""
    text = json.dumps(
        {"recipe": RECIPE if recipe is None else recipe, "architecture": ARCHITECTURE},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Progress:
    """One bar over the whole training (steps of every part), or nothing."""

    update: Callable[[str, int], None] = lambda part, steps: None


def world_pictures(
    count: int, seed: int, sizes=(64, 96, 128), out: int = IMAGE_SIZE, long_share: float = 0.0
):
    """`count` (prompt, picture) pairs from the sample generator; pictures drawn at one of `sizes`
    and resized to `out` (bicubic, as CLIP's preprocessing does), or kept at their size when
    `out` is None."""
    rng = random.Random(seed)
    specs, pictures = [], []
    for _ in range(count):
        spec = random_prompt(rng, long=rng.random() < long_share)
        side = rng.choice(sizes)
        picture = draw_picture(spec, rng.randrange(2**31), (side, side))
        if out is not None and side != out:
            picture = picture.resize((out, out), Image.Resampling.BICUBIC)
        specs.append(spec)
        pictures.append(np.asarray(picture))
    return specs, pictures


def optimize(optimizer, loss, recipe: dict, step: int) -> None:
    """One step at the recipe's learning rate, decayed along a cosine to 5 % of it."""
    for group in optimizer.param_groups:
        group["lr"] = recipe["lr"] * (
            0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / recipe["steps"]))
        )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def _clip_pixels(pictures: np.ndarray):
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (
        torch.from_numpy(np.ascontiguousarray(pictures)).permute(0, 3, 1, 2).float() / 255 - mean
    ) / std


def train_clip(
    vision, text_encoder_2, tokenizer_2, recipe: dict, seed: int, progress: Progress
) -> None:
    """Contrastive (CLIP) training of the vision tower and text_encoder_2's projection; the text
    transformer is frozen, so its pooled features are computed once."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch
    import torch.nn.functional as F

    specs, pictures = world_pictures(recipe["pictures"], seed + 1, long_share=recipe["long_share"])
    pixels = _clip_pixels(np.stack(pictures))
    with torch.no_grad():
        features = torch.cat(
            [
                text_encoder_2.text_model(
                    tokenizer_2(
                        [s.prompt for s in specs[i : i + 256]],
                        padding="max_length",
                        max_length=77,
                        truncation=True,
                        return_tensors="pt",
                    ).input_ids
                ).pooler_output
                for i in range(0, len(specs), 256)
            ]
        )
    prompt_ids = torch.as_tensor(_prompt_ids([s.prompt for s in specs]))
    projection = text_encoder_2.text_projection
    log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    optimizer = torch.optim.AdamW(
        [*vision.parameters(), *projection.parameters(), log_scale],
        lr=recipe["lr"],
        weight_decay=0.01,
    )
    generator = torch.Generator().manual_seed(seed + 2)
    # Colour and background tell most pairs of a random batch apart; batches of pictures that share
    # them (hard negatives) make the subject's shape the thing to learn.
    groups: dict[tuple[str, str], list[int]] = {}
    for i, spec in enumerate(specs):
        groups.setdefault((spec.colour, spec.background), []).append(i)
    members = [torch.tensor(v) for _, v in sorted(groups.items())]
    vision.train()
    batch = recipe["batch"]
    per_group = recipe["hard_group"]
    for step in range(recipe["steps"]):
        if step % recipe["hard_every"] == 1:
            picked = torch.randint(
                0, len(members), (batch // per_group,), generator=generator
            ).tolist()
            index = torch.cat(
                [
                    members[g][torch.randint(0, len(members[g]), (per_group,), generator=generator)]
                    for g in picked
                ]
            )
        else:
            index = torch.randint(0, len(pixels), (batch,), generator=generator)
        # a mirrored picture says the same
        x = pixels[index].flip(3) if (step // 2) % 2 else pixels[index]
        image = F.normalize(vision(pixel_values=x).image_embeds, dim=-1)
        text = F.normalize(projection(features[index]), dim=-1)
        logits = log_scale.exp() * image @ text.T
        ids = prompt_ids[index]
        same = (ids[:, None] == ids[None, :]) & ~torch.eye(batch, dtype=torch.bool)
        logits = logits.masked_fill(same, -1e4)  # one prompt drawn twice is not a negative
        labels = torch.arange(batch)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimize(optimizer, loss, recipe, step)
        progress.update("CLIP pair", 1)
    vision.eval()


def _prompt_ids(prompts: list[str]) -> np.ndarray:
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(p, len(seen)) for p in prompts])


def _crops(pictures: list[np.ndarray], count: int, size: int, generator):
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    chosen = torch.randint(0, len(pictures), (count,), generator=generator).tolist()
    out = []
    for i in chosen:
        picture = pictures[i]
        top = int(torch.randint(0, picture.shape[0] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, picture.shape[1] - size + 1, (1,), generator=generator))
        out.append(picture[top : top + size, left : left + size])
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 127.5 - 1


def train_vae(vae, recipe: dict, seed: int, progress: Progress) -> None:
    """The VAE as an autoencoder (MSE + L1, a whisper of KL) on crops of pictures drawn at the
    demo's sizes; its scaling factor is then set so the latents have unit variance, as SDXL's
    are."""
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch
    import torch.nn.functional as F

    _, pictures = world_pictures(
        recipe["pictures"], seed + 3, sizes=tuple(recipe["sizes"]), out=None
    )
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe["lr"], weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed + 4)
    vae.train()
    for step in range(recipe["steps"]):
        x = _crops(pictures, recipe["batch"], recipe["crop"], generator)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        reconstruction = vae.decode(z).sample
        loss = (
            F.mse_loss(reconstruction, x)
            + 0.5 * F.l1_loss(reconstruction, x)
            + recipe["kl"] * posterior.kl().mean()
        )
        optimize(optimizer, loss, recipe, step)
        progress.update("VAE", 1)
    vae.eval()
    with torch.no_grad():
        latents = vae.encode(_crops(pictures, 256, IMAGE_SIZE, generator)).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


def total_steps(recipe: dict = RECIPE) -> int:
    return recipe["clip"]["steps"] + recipe["vae"]["steps"] + recipe["unet"]["steps"]


def tiny_cache_dir() -> Path:
    """Where this machine keeps its trained tiny worlds (shared by every home, checkout and test
    run)."""
    chosen = environment_settings().text("models.tiny_cache")
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "luna" / "tiny-world"


def tiny_world_root() -> Path:
    return tiny_cache_dir() / recipe_hash()
