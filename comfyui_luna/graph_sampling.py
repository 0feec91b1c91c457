"""One refinement pass on the graph's own models: every item's pixels encoded by the graph's VAE,
one `comfy.sample.sample` call over the batch of latents (row i conditioned by row i, noised from
seed + i), decoded by the graph's VAE.

SDXL's size conditioning (`encode_adm`: original size, crop corner, target size, in the `y` vector)
is one per CONDITIONING entry in ComfyUI. A wrapper on the model (ComfyUI's
`model_function_wrapper`) writes each row's own with the model's own embedder: ComfyUI hands the
UNet whole copies of the latent batch, one per conditioning entry in the call, so row r is item
r mod B.
"""

from __future__ import annotations

from dataclasses import dataclass

from luna_core.errors import QueryError

# these samplers draw fresh noise for the whole batch at each step (from the call's seed): an
# item's result then depends on its batch, which the report says
BATCH_NOISE_SAMPLERS = ("ancestral", "sde", "lcm", "ddpm", "er_sde", "seeds", "restart")


@dataclass(frozen=True)
class PassSettings:
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    denoise: float
    batch_cap: int  # items per sampler call; 0: all of them


def check_sdxl(model, node: str) -> None:
    """The MODEL must be SDXL-family (SDXL, Pony, Illustrious, Juggernaut…): the conditioning is
    SDXL's two text encoders and its size vector."""
    # comfy: present inside ComfyUI (and as the test double in Luna's tests)
    import comfy.model_base

    inner = getattr(model, "model", None)
    if not isinstance(inner, comfy.model_base.SDXL):
        raise QueryError(
            f"{node}: the MODEL is {type(inner).__name__}, not an SDXL-family model (SDXL, Pony, "
            "Illustrious, …): Luna's conditionings are SDXL's"
        )


def batch_noise_note(sampler_name: str) -> str | None:
    if any(part in sampler_name for part in BATCH_NOISE_SAMPLERS):
        return (
            f"sampler {sampler_name} draws noise for the whole batch at every step: an item's "
            "result depends on its batch (euler, dpmpp_2m, ddim, … do not)"
        )
    return None


def size_vector(model, sizes: tuple[int, int, int, int, int, int]):
    """SDXL's size embedding for (height, width, crop_top, crop_left, target_height, target_width),
    as `encode_adm` makes it, with the model's own embedder."""
    # torch: the nodes run inside ComfyUI, which has it loaded already
    import torch

    embedder = model.model.embedder
    return torch.flatten(torch.cat([embedder(torch.Tensor([value])) for value in sizes]))


def with_row_sizes(model, sizes: list[tuple[int, int, int, int, int, int]]):
    """A clone of the MODEL whose UNet sees row i's own size conditioning (see the module's
    docstring); a wrapper already set (another node's) still runs, inside this one."""
    vectors = [size_vector(model, s) for s in sizes]
    width = vectors[0].shape[0]
    previous = model.model_options.get("model_function_wrapper")
    clone = model.clone()

    def per_row(apply_model, args):
        # torch: the nodes run inside ComfyUI, which has it loaded already
        import torch

        c = dict(args["c"])
        y = c.get("y")
        if y is not None:
            count = len(vectors)
            if y.shape[0] % count:
                raise QueryError(f"the UNet got {y.shape[0]} rows for a batch of {count}")
            rows = torch.stack([vectors[r % count] for r in range(y.shape[0])])
            y = y.clone()
            y[:, -width:] = rows.to(device=y.device, dtype=y.dtype)
            c["y"] = y
        args = {**args, "c": c}
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(per_row)
    return clone


def _chunks(count: int, cap: int) -> list[range]:
    size = count if cap <= 0 else cap
    return [range(i, min(count, i + size)) for i in range(0, count, size)]


def _sample_rows(model, vae, pixels, positive, negative, sizes, seeds, settings, on_step):
    # comfy and torch: present inside ComfyUI (comfy as the test double in Luna's tests)
    import comfy.sample
    import torch

    latent = comfy.sample.fix_empty_latent_channels(model, vae.encode(pixels[..., :3]))
    noise = torch.cat(
        [comfy.sample.prepare_noise(latent[i : i + 1], seed) for i, seed in enumerate(seeds)]
    )
    samples = comfy.sample.sample(
        with_row_sizes(model, sizes),
        noise,
        settings.steps,
        settings.cfg,
        settings.sampler_name,
        settings.scheduler,
        positive,
        negative,
        latent,
        denoise=settings.denoise,
        seed=seeds[0],
        disable_pbar=True,
        callback=lambda step, x0, x, total: on_step(),
    )
    return vae.decode(samples).float().clamp(0, 1)


def _rows(conditioning, picked: range) -> list:
    return [
        [tokens[picked.start : picked.stop], {**extra, **_pooled_rows(extra, picked)}]
        for tokens, extra in conditioning
    ]


def _pooled_rows(extra: dict, picked: range) -> dict:
    pooled = extra.get("pooled_output")
    return {} if pooled is None else {"pooled_output": pooled[picked.start : picked.stop]}


def refine_pass(model, vae, pixels, positive, negative, sizes, seeds, settings: PassSettings):
    """[B, H, W, 3] in [0, 1] → refined [B, H, W, 3]: B items in one sampler call (or calls of
    `batch_cap` items; halved again while memory runs out), ComfyUI's progress bar advanced at
    every sampler step (by the items it moves) and its interrupt honoured between calls."""
    # comfy and torch: present inside ComfyUI (comfy as the test double in Luna's tests)
    import comfy.model_management
    import comfy.utils
    import torch

    count = pixels.shape[0]
    total = count * settings.steps
    bar, done = comfy.utils.ProgressBar(total), [0]
    out: list = [None] * count
    pending = _chunks(count, settings.batch_cap)
    while pending:
        picked = pending.pop(0)
        comfy.model_management.throw_exception_if_processing_interrupted()
        before = done[0]

        def on_step(n: int = len(picked)) -> None:
            done[0] += n
            bar.update_absolute(min(done[0], total), total)

        try:
            refined = _sample_rows(
                model,
                vae,
                pixels[picked.start : picked.stop],
                _rows(positive, picked),
                _rows(negative, picked),
                sizes[picked.start : picked.stop],
                seeds[picked.start : picked.stop],
                settings,
                on_step,
            )
        except comfy.model_management.OOM_EXCEPTION:
            done[0] = before  # the halves count their steps again
            if len(picked) == 1:
                raise
            half = picked.start + len(picked) // 2
            pending[:0] = [range(picked.start, half), range(half, picked.stop)]
            comfy.model_management.soft_empty_cache()
            continue
        for offset, i in enumerate(picked):
            out[i] = refined[offset]
    return torch.stack(out)
