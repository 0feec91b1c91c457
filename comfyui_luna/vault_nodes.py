"""Conditioning nodes: each image of a batch (or the box around its mask) answered by the vault
or a projector, in this process or by a running `luna serve`, and Luna Blend."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import load

from comfyui_luna.comfy_types import mask_boxes, png_bytes, to_pictures
from comfyui_luna.inputs import HOME_INPUT, option_inputs, read_inputs
from comfyui_luna.kept import home_root, kept
from luna_core.ask.ask_options import AskOptions
from luna_core.ask.boxes import Box
from luna_core.ask.mixing import aligned, mix_side
from luna_core.errors import NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.projector.names import DEFAULT_PROJECTOR
from luna_service.client import post


def _service(home: str, projector: str):
    """The home's vault, kept across executions (encoders and index load once) and swapped, as `luna
    serve` swaps it, when a new index version is published or the projector's alias moves."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_service.service import LunaService

    root = home_root(home)

    def open_service():
        luna_home = LunaHome.existing(root)
        return LunaService(luna_home, luna_home.profile(), projector_uri=projector)

    service = kept(("service", root, projector), open_service)
    service.refresh()  # a stat of the index pointer; the registry at most every few seconds
    return service


def _in_process(
    pictures: list, boxes: list, source: str, home: str, k: int, temperature: float, projector: str
):
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.ask.answers import crop

    state = _service(home, projector).state
    crops = [
        crop(p, None if b is None else Box.parse(b), "ComfyUI IMAGE")
        for p, b in zip(pictures, boxes)
    ]
    if source == "projector" and state.projector is None:
        raise NotBuiltError(f"no projector at {projector}: register one (luna build)")
    c = state.vault.condition_crops(crops, source, k, temperature, projector=state.projector)
    return (
        c.prompt_embeds,
        c.pooled_prompt_embeds,
        c.negative_prompt_embeds,
        c.negative_pooled_prompt_embeds,
    )


def _by_server(server: str, pictures: list, boxes: list, source: str, k: int, temperature: float):
    parts = []
    for picture, box in zip(pictures, boxes):
        params = [("source", source), ("k", str(k)), ("temperature", str(temperature))] + (
            [("box", box)] if box else []
        )
        parts.append(load(post(server, "/condition", params, png_bytes(picture), "server_url")))
    # Answers of different chunk counts meet at one length, both sides alike (the service's own
    # rule).
    tokens = aligned(
        [p["prompt_embeds"] for p in parts] + [p["negative_prompt_embeds"] for p in parts]
    )
    return (
        np.concatenate(tokens[: len(parts)]),
        np.concatenate([p["pooled_prompt_embeds"] for p in parts]),
        np.concatenate(tokens[len(parts) :]),
        np.concatenate([p["negative_pooled_prompt_embeds"] for p in parts]),
    )


def _conditioning(tokens: np.ndarray, pooled: np.ndarray) -> list:
    # torch and the model libraries take about a second to import: only code that runs a model pays
    # for it
    import torch

    return [
        [
            torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32)),
            {"pooled_output": torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))},
        ]
    ]


def _answer(image, mask, source: str, home: str, server_url: str, ask: AskOptions, projector: str):
    pictures = to_pictures(image)
    boxes = mask_boxes(mask, len(pictures), pictures[0].width, pictures[0].height)
    if server_url:
        tokens, pooled, neg_tokens, neg_pooled = _by_server(
            server_url, pictures, boxes, source, ask.k, ask.temperature
        )
    else:
        tokens, pooled, neg_tokens, neg_pooled = _in_process(
            pictures, boxes, source, home, ask.k, ask.temperature, projector
        )
    return _conditioning(tokens, pooled), _conditioning(neg_tokens, neg_pooled)


_COMMON_OPTIONAL = {
    "mask": ("MASK",),
    "home": HOME_INPUT,
    "server_url": (
        "STRING",
        {
            "default": "",
            "tooltip": "a running `luna serve`, e.g. http://127.0.0.1:7861 "
            "(empty: Luna's Python API in this process)",
        },
    ),
}


# What the conditioning nodes leave out of the ask options, and why.
VAULT_OMITTED = {
    "prompt": "a typed prompt meets the answer in Luna Blend, already encoded",
    "negative_prompt": "a typed negative meets the answer's in a second Luna Blend",
    "mode": "Luna Blend mixes, by its own mode",
    "alpha": "Luna Blend mixes, by its own alpha",
}
BLEND_OMITTED = {
    "k": "Luna Blend mixes two conditionings: no neighbours are asked for",
    "temperature": "Luna Blend mixes two conditionings: no neighbours are weighted",
    "prompt": "the typed prompt arrives encoded, as `conditioning`",
    "negative_prompt": "the typed negative arrives encoded, in a second Luna Blend",
    "mode": "replace would be the answer alone: Luna Blend's own mode is blend or concat",
}
BLEND_MODES = ("blend", "concat")


class _CropConditioning:
    """What both conditioning nodes share: IMAGE (+ MASK) in, positive and negative CONDITIONING
    out."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "condition"


class LunaVaultConditioning(_CropConditioning):
    """Each image of the batch (or the box around its mask) → its own k-NN answer from the
    vault."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                **option_inputs(AskOptions, VAULT_OMITTED, {}),
            },
            "optional": dict(_COMMON_OPTIONAL),
        }

    def condition(self, image, k, temperature, mask=None, home="", server_url=""):
        ask = read_inputs(AskOptions, {"k": k, "temperature": temperature}, VAULT_OMITTED)
        ask.check()
        return _answer(image, mask, "vault", home, server_url, ask, DEFAULT_PROJECTOR)


class LunaProjectorConditioning(_CropConditioning):
    """Each image of the batch (or the box around its mask) → a registered projector's answer."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "projector": ("STRING", {"default": DEFAULT_PROJECTOR}),
            },
            "optional": dict(_COMMON_OPTIONAL),
        }

    def condition(self, image, projector, mask=None, home="", server_url=""):
        return _answer(image, mask, "projector", home, server_url, AskOptions(), projector)


class LunaBlend:
    """A typed CONDITIONING with the vault's, by luna_core.ask.mixing's rule for one side: blend
    gives (1 - alpha) * typed + alpha * vault (tokens and pooled); concat gives the typed tokens,
    then the vault's, pooled from the typed. Mix the negative side with a second Luna Blend
    (typed negative with the vault's negative). A typed batch of 1 is repeated over the vault's
    batch."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "blend"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING",),
                "vault_conditioning": ("CONDITIONING",),
                **option_inputs(AskOptions, BLEND_OMITTED, {}),
                "mode": (list(BLEND_MODES),),
            }
        }

    def blend(self, conditioning, vault_conditioning, alpha, mode):
        read_inputs(AskOptions, {"alpha": alpha}, BLEND_OMITTED).check(neighbours=False)
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        vault_tokens, vault_extra = vault_conditioning[0]
        vault_pooled = vault_extra.get("pooled_output")
        out = []
        for tokens, extra in conditioning:
            pooled = extra.get("pooled_output")
            batch = vault_tokens.shape[0]
            tokens = tokens.expand(batch, -1, -1) if tokens.shape[0] == 1 else tokens
            if tokens.shape[0] != batch or tokens.shape[-1] != vault_tokens.shape[-1]:
                raise ValueError(
                    f"CONDITIONING {list(tokens.shape)} cannot meet the vault's "
                    f"{list(vault_tokens.shape)}"
                )
            if pooled is not None:
                pooled = pooled.expand(batch, -1) if pooled.shape[0] == 1 else pooled
            new_tokens, new_pooled = mix_side(
                tokens,
                pooled,
                vault_tokens,
                vault_pooled,
                mode,
                alpha,
                join=lambda parts: torch.cat(list(parts), dim=-2),
            )
            out.append([new_tokens, {**extra, "pooled_output": new_pooled}])
        return (out,)
