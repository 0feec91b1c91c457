"""Refinement nodes: a detector's output as LunaDetections, a stack of LoRAs, and Luna Refine,
whose options are luna_core.refine.options.RefineOptions, declared once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from comfyui_luna.comfy_types import to_pictures
from comfyui_luna.inputs import HOME_INPUT, option_inputs, read_inputs
from comfyui_luna.kept import home_root, kept
from luna_core.refine.lora_files import lora_set
from luna_core.refine.options import RefineOptions


class ImageAndReport:
    """A refiner node's outputs: the refined IMAGE and the run's STRING report."""

    CATEGORY = "Luna"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "report")


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


def _refiner(home: str):
    """The home's Refiner (sampler, vault, LoRA folders), kept across executions; each run takes
    its own conditioning source from it (`Refiner.with_source`)."""
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.session import LunaSession

    root = home_root(home)
    return kept(("refiner", root), lambda: LunaSession.open(root).refiner())


def item_lora_lines(text: str, count: int) -> list[tuple[str, ...]]:
    """`item_loras`: line i holds detection i's LoRAs, `NAME:W, NAME:W` (an empty line: none)."""
    lines = text.splitlines() if text.strip() else []
    if len(lines) > count:
        raise ValueError(f"item_loras has {len(lines)} lines for {count} detections")
    return [tuple(p.strip() for p in line.split(",") if p.strip()) for line in lines] + [()] * (
        count - len(lines)
    )


# What Luna Refine leaves out of the refine options, and why.
OMITTED = {
    "sequential": "a comparison for benchmarks (one sampler call per item), not a way to refine",
    "tracking_uri": "the home's own registry answers; `projector` names the model in it",
    "ip_adapter": "an IP-Adapter belongs to the graph's own IPAdapter nodes in ComfyUI",
    "ip_weight": "goes with ip_adapter",
    "loras": "a connection from Luna LoRA Stack (input `loras`), not a widget",
}


class LunaRefine(ImageAndReport):
    """Luna's refiners in one node: with detections, the detailer (each detection's crop conditioned
    by its own vault or projector answer, its prompt piece mixed in, its own LoRAs, its mask
    pasted back); without, the chess refiner. Every item of a pass goes through one batched UNet
    call, each row with its own LoRA set (the stack for all, a detection's own, `item_loras`, and
    with `lora_from` vault the strongest of its neighbours' LoRAs). The models are the Luna home's
    profile, not the graph's. Its widgets are the refine options `luna refine` takes
    (luna_core.refine.options.RefineOptions), but for those OMITTED names."""

    FUNCTION = "refine"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE",),
                **option_inputs(RefineOptions, OMITTED, {}),
                "home": HOME_INPUT,
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
            },
        }

    # ComfyUI calls a node with each input by name: the parameters are INPUT_TYPES, one for one
    # (tests/test_architecture.py holds them equal), and the options among them become one
    # RefineOptions.
    def refine(
        self,
        image,
        source,
        prompt,
        negative_prompt,
        alpha,
        k,
        temperature,
        projector,
        piece_mode,
        grid,
        strength,
        steps,
        guidance,
        seed,
        batch_size,
        memory_budget_mb,
        lora_from,
        lora_cap,
        per_block,
        composition_blocks,
        home,
        detections=None,
        loras=None,
        item_loras="",
    ):
        # torch and the model libraries take about a second to import: only code that runs a model
        # pays for it
        import torch

        options = replace(read_inputs(RefineOptions, locals(), OMITTED), loras=tuple(loras or ()))
        settings = options.settings()
        refiner = _refiner(home).with_source(options.source_settings())
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
                width, height = detections["size"]
                raise ValueError(
                    f"the detections are for a {width}x{height} image, "
                    f"not {picture.width}x{picture.height}"
                )
            refined, report = refiner.refine(picture, settings, detections=found)
            out.append(np.asarray(refined.convert("RGB"), dtype=np.float32) / 255.0)
            reports.append(report.summary())
        return (torch.from_numpy(np.stack(out)), "\n\n".join(reports))
