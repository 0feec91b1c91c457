"""The node classes, following ComfyUI's conventions:

- IMAGE is a float tensor [B, H, W, C] in [0, 1]; MASK is [B, H, W] (or [H, W]) in [0, 1];
- CONDITIONING is a list of [tokens [B, 77, D], {"pooled_output": [B, P]}]; a batch of B
  conditionings meets a batch of B latents item by item (latent i gets conditioning i).

With `server_url` the nodes ask a running `luna serve`; without, they use Luna's Python API in this
process, with the home's models and index cached across executions.
"""

from __future__ import annotations

import io
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import replace

import numpy as np
from PIL import Image
from safetensors.numpy import load

from luna_core.ask.boxes import Box
from luna_core.ask.mixing import aligned, mix_side
from luna_core.errors import NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import resolve_profile
from luna_core.refine.lora_files import lora_set

# luna_core.projector.names; the pack loads without Luna
DEFAULT_PROJECTOR = "models:/luna-projector@champion"
_cache: dict = {}
_cache_lock = threading.Lock()

# ---------------------------------------------------------------- inputs


def to_pictures(image) -> list:
    """ComfyUI IMAGE [B, H, W, C] float in [0, 1] → B RGB PIL pictures."""

    array = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"IMAGE must be [B, H, W, C] with C in 1, 3, 4; got {list(array.shape)}")
    pixels = np.clip(array * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return [
        Image.fromarray(p[..., :3] if p.shape[-1] != 1 else p[..., 0]).convert("RGB")
        for p in pixels
    ]


def mask_boxes(mask, count: int, width: int, height: int) -> list[str | None]:
    """For each batch item, the X,Y,W,H box around its mask (> 0.5), or None (the whole picture)."""
    if mask is None:
        return [None] * count
    array = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    if array.ndim == 2:
        array = array[None]
    boxes = []
    for i in range(count):
        m = array[min(i, len(array) - 1)]
        if m.shape != (height, width):
            raise ValueError(f"MASK {list(m.shape)} does not match the IMAGE's {height}x{width}")
        ys, xs = np.nonzero(m > 0.5)
        boxes.append(
            None
            if len(xs) == 0
            else f"{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}"
        )
    return boxes


# ---------------------------------------------------------------- backends


def _service(home: str, projector: str):
    """The home's vault, kept across executions (encoders and index load once) and swapped, as `luna
    serve` swaps it, when a new index version is published or the projector's alias moves."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_service.service import LunaService

    key = (str(LunaHome.resolve(home or None).root), projector)
    with _cache_lock:
        if key not in _cache:
            luna_home = LunaHome.existing(key[0])
            _cache[key] = LunaService(
                luna_home,
                resolve_profile(luna_home.model_profile(), luna_home.models_dir),
                projector_uri=projector,
            )
        service = _cache[key]
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
        buffer = io.BytesIO()
        picture.save(buffer, "PNG")
        params = [("source", source), ("k", str(k)), ("temperature", str(temperature))] + (
            [("box", box)] if box else []
        )
        request = urllib.request.Request(
            f"{server.rstrip('/')}/condition?{urllib.parse.urlencode(params)}",
            data=buffer.getvalue(),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                parts.append(load(response.read()))
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                message = exc.reason
            raise RuntimeError(f"Luna service {server}: {message}") from None
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


def _answer(
    image, mask, source: str, home: str, server_url: str, k: int, temperature: float, projector: str
):
    pictures = to_pictures(image)
    boxes = mask_boxes(mask, len(pictures), pictures[0].width, pictures[0].height)
    if server_url:
        tokens, pooled, neg_tokens, neg_pooled = _by_server(
            server_url, pictures, boxes, source, k, temperature
        )
    else:
        tokens, pooled, neg_tokens, neg_pooled = _in_process(
            pictures, boxes, source, home, k, temperature, projector
        )
    return _conditioning(tokens, pooled), _conditioning(neg_tokens, neg_pooled)


# ---------------------------------------------------------------- nodes


_COMMON_OPTIONAL = {
    "mask": ("MASK",),
    "home": (
        "STRING",
        {"default": "", "tooltip": "Luna home folder (empty: $LUNA_HOME, else ./luna_home)"},
    ),
    "server_url": (
        "STRING",
        {
            "default": "",
            "tooltip": "a running `luna serve`, e.g. http://127.0.0.1:7861 "
            "(empty: Luna's Python API in this process)",
        },
    ),
}


class _CropConditioning:
    """What both conditioning nodes share: IMAGE (+ MASK) in, positive and negative CONDITIONING
    out."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "condition"


class LunaVaultConditioning(_CropConditioning):
    """Each image of the batch (or the box around its mask) → its own k-NN answer from the vault."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "k": ("INT", {"default": 5, "min": 1, "max": 64}),
                "temperature": (
                    "FLOAT",
                    {"default": 0.05, "min": 0.001, "max": 10.0, "step": 0.005},
                ),
            },
            "optional": dict(_COMMON_OPTIONAL),
        }

    def condition(self, image, k=5, temperature=0.05, mask=None, home="", server_url=""):
        return _answer(image, mask, "vault", home, server_url, k, temperature, DEFAULT_PROJECTOR)


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

    def condition(self, image, projector=DEFAULT_PROJECTOR, mask=None, home="", server_url=""):
        return _answer(image, mask, "projector", home, server_url, 5, 0.05, projector)


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
                "alpha": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05}),
                "mode": (["blend", "concat"],),
            }
        }

    def blend(self, conditioning, vault_conditioning, alpha=0.5, mode="blend"):
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


# ---------------------------------------------------------------- refinement: detections and
# per-item LoRAs


class LunaDetections:
    """A detector's output (COCO .json, YOLO .txt, a label-mask PNG, a folder of masks) for the
    IMAGE: LunaDetections (boxes, masks, labels, prompt pieces, LoRAs) for Luna Refine, and the
    masks as a MASK batch (one per detection) for any other node."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("LunaDetections", "MASK")
    RETURN_NAMES = ("detections", "masks")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "path": ("STRING", {"default": "", "tooltip": "detections file or mask folder"}),
            }
        }

    def load(self, image, path=""):
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        # the detections reader pulls scipy in: only graphs that use the node pay for it
        from luna_core.refine.detections import read_detections

        picture = to_pictures(image)[0]
        found = read_detections(path, picture.size)
        masks = torch.from_numpy(np.stack([d.mask for d in found]).astype(np.float32))
        return ({"size": picture.size, "detections": found}, masks)


class LunaLoraStack:
    """One LoRA (a file name in the home's [models] lora_dirs, or a hash) and its weight, added to a
    stack: the LoRAs every item of a Luna Refine gets."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("LunaLoRAs",)
    RETURN_NAMES = ("loras",)
    FUNCTION = "stack"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lora_name": ("STRING", {"default": ""}),
                "weight": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05}),
            },
            "optional": {"loras": ("LunaLoRAs",)},
        }

    def stack(self, lora_name="", weight=1.0, loras=None):
        if not lora_name.strip():
            raise ValueError("Luna LoRA Stack: give a LoRA name")
        return ((*(loras or ()), f"{lora_name.strip()}:{weight:g}"),)


def _refiner(home: str, source: str, projector: str):
    """The home's Refiner (sampler, conditioner, LoRA folders), kept across executions."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.refine.options import SourceSettings
    from luna_core.refine.refiner import Refiner

    key = ("refiner", str(LunaHome.resolve(home or None).root), source, projector)
    with _cache_lock:
        if key not in _cache:
            luna_home = LunaHome.existing(key[1])
            profile = resolve_profile(luna_home.model_profile(), luna_home.models_dir)
            _cache[key] = Refiner(luna_home, profile, SourceSettings(source, projector=projector))
        return _cache[key]


def item_lora_lines(text: str, count: int) -> list[tuple[str, ...]]:
    """`item_loras`: line i holds detection i's LoRAs, `NAME:W, NAME:W` (an empty line: none)."""
    lines = text.splitlines() if text.strip() else []
    if len(lines) > count:
        raise ValueError(f"item_loras has {len(lines)} lines for {count} detections")
    return [tuple(p.strip() for p in line.split(",") if p.strip()) for line in lines] + [()] * (
        count - len(lines)
    )


class LunaRefine:
    """Luna's refiners in one node: with detections, the detailer (each detection's crop conditioned
    by its own vault or projector answer, its prompt piece mixed in, its own LoRAs, its mask
    pasted back); without, the chess refiner. Every item of a pass goes through one batched UNet
    call, each row with its own LoRA set (the stack for all, a detection's own, `item_loras`, and
    with `lora_from_vault` > 0 the strongest of its neighbours' LoRAs). The models are the Luna
    home's profile, not the graph's."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "report")
    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                "source": (["vault", "projector"],),
                "steps": ("INT", {"default": 20, "min": 1, "max": 200}),
                "strength": ("FLOAT", {"default": 0.35, "min": 0.01, "max": 1.0, "step": 0.01}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1}),
            },
            "optional": {
                "detections": ("LunaDetections",),
                "loras": ("LunaLoRAs",),
                "item_loras": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": "line i: detection i's LoRAs, NAME:W, NAME:W",
                    },
                ),
                "lora_from_vault": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 16,
                        "tooltip": "each item's neighbours' strongest LoRAs (0: off)",
                    },
                ),
                "per_block": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "down and mid blocks see the whole image's answer",
                    },
                ),
                "grid": ("INT", {"default": 3, "min": 1, "max": 16}),
                "memory_budget_mb": (
                    "FLOAT",
                    {"default": 0.0, "min": 0.0, "tooltip": "0: 80 % of free GPU memory"},
                ),
                "home": _COMMON_OPTIONAL["home"],
                "projector": ("STRING", {"default": DEFAULT_PROJECTOR}),
            },
        }

    def refine(self, image, **options):
        """ComfyUI passes every connected or set input by name (optional ones may be absent)."""
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        # the refiner's settings pull no model in, but the pack keeps its own imports light
        from luna_core.refine.options import RefineOptions

        get = options.get
        given = {
            k: options[k]
            for k in ("grid", "strength", "steps", "seed", "per_block", "memory_budget_mb")
            if k in options
        }
        settings = RefineOptions(
            **given,
            loras=tuple(get("loras") or ()),
            lora_from="vault" if get("lora_from_vault", 0) else None,
            lora_cap=max(1, get("lora_from_vault", 0)),
        ).settings()
        detections, item_loras = get("detections"), get("item_loras", "")
        home, source, projector = (
            get("home", ""),
            get("source", "vault"),
            get("projector", DEFAULT_PROJECTOR),
        )
        refiner = _refiner(home, source, projector)
        found = None
        if detections is not None:
            found = detections["detections"]
            extra = item_lora_lines(item_loras, len(found))
            found = [
                replace(d, loras=(*d.loras, *lora_set(list(more)))) for d, more in zip(found, extra)
            ]
        out, reports = [], []
        for picture in to_pictures(image):
            if found is not None and picture.size != tuple(detections["size"]):
                raise ValueError(
                    f"the detections are for a {detections['size'][0]}x{detections['size'][1]} "
                    "image, "
                    f"not {picture.width}x{picture.height}"
                )
            refined, report = refiner.refine(picture, settings, detections=found)
            out.append(np.asarray(refined.convert("RGB"), dtype=np.float32) / 255.0)
            reports.append(report.summary())
        return (torch.from_numpy(np.stack(out)), "\n\n".join(reports))


NODE_CLASS_MAPPINGS = {
    "LunaVaultConditioning": LunaVaultConditioning,
    "LunaProjectorConditioning": LunaProjectorConditioning,
    "LunaBlend": LunaBlend,
    "LunaDetections": LunaDetections,
    "LunaLoraStack": LunaLoraStack,
    "LunaRefine": LunaRefine,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "LunaVaultConditioning": "Luna Vault Conditioning",
    "LunaProjectorConditioning": "Luna Projector Conditioning",
    "LunaBlend": "Luna Blend",
    "LunaDetections": "Luna Detections",
    "LunaLoraStack": "Luna LoRA Stack",
    "LunaRefine": "Luna Refine (per-item LoRAs, detections)",
}
