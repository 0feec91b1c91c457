"""`luna refine`: the chess refiner (no boxes) or the semantic detailer (boxes), one sampler call
per pass."""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

from luna_core.ask.boxes import Box, load_boxes
from luna_core.errors import QueryError
from luna_core.home.home import LunaHome
from luna_core.images import read_picture
from luna_core.models.profiles import AUTO
from luna_core.refine.detections import read_detections
from luna_core.refine.options import (
    DEFAULT_LORA_CAP,
    SOURCES,
    RefineOptions,
    RefineSettings,
    SamplerSettings,
    SourceSettings,
)


def settings_of(args: argparse.Namespace):
    return RefineOptions(
        grid=args.grid,
        strength=args.strength,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        memory_budget_mb=args.memory_budget,
        ip_weight=args.ip_weight,
        sequential=args.sequential,
        loras=tuple(args.lora or ()),
        lora_from=args.lora_from,
        lora_cap=args.lora_cap,
        per_block=args.per_block,
        composition_blocks=args.composition_blocks,
    ).settings()


def source_settings(args: argparse.Namespace):
    return SourceSettings(
        source=args.source,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        alpha=args.alpha,
        k=args.k,
        projector=args.projector,
        tracking_uri=args.tracking_uri,
        piece_mode=args.piece_mode,
    )


def cmd_refine(args: argparse.Namespace) -> int:
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.refine.refine_report import save_image

    home = LunaHome.existing(args.home)
    settings, source = settings_of(args), source_settings(args)
    source.check()
    boxes = [Box.parse(b) for b in args.box or []] + (load_boxes(args.boxes) if args.boxes else [])
    image = read_picture(args.image)
    detections = read_detections(args.detections, image.size, args.image) if args.detections else []
    if detections and boxes:
        raise QueryError("give boxes or --detections, not both")
    session = LunaSession.open(home, device=args.device)
    refiner = session.refiner(source, ip_adapter=args.ip_adapter)
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(
            name, tqdm(total=total, desc=f"refine {name}", unit="item")
        )
        bar.update(done - bar.n)

    if detections:
        print(
            f"{len(detections)} detections from {args.detections}: "
            + ", ".join(f"{d.label or '?'} at {d.box}" for d in detections[:8])
            + (" …" if len(detections) > 8 else "")
        )
    refined, report = refiner.refine(image, settings, boxes, detections, progress)
    for bar in bars.values():
        bar.close()
    out = save_image(refined, args.out, report)
    print(report.summary())
    print(f"wrote {out} ({refined.width}x{refined.height})")
    return 0


def add_parser(sub) -> None:
    cmd = sub.add_parser(
        "refine",
        help="refine an image tile by tile (chess) or box by box (detailer), "
        "each item conditioned by its own vault or projector answer",
    )
    cmd.add_argument("image", help="PNG, JPEG or WebP file")
    cmd.add_argument("--out", required=True, help="output file (.png, .jpg or .webp)")
    cmd.add_argument(
        "--grid",
        type=int,
        default=RefineSettings.grid,
        help="chess refiner: N x N tiles (default %(default)s)",
    )
    cmd.add_argument("--box", action="append", help="detailer: a box X,Y,W,H (repeat for more)")
    cmd.add_argument("--boxes", help="detailer: a JSON file of boxes ([[x, y, w, h], ...])")
    cmd.add_argument(
        "--detections",
        help="detailer: a detector's output (COCO .json with bbox or segmentation, YOLO "
        ".txt, a label-mask PNG, or a folder of masks); the mask decides what is "
        "pasted back",
    )
    cmd.add_argument(
        "--source",
        default=SourceSettings.source,
        choices=list(SOURCES),
        help="where each item's conditioning comes from (default vault)",
    )
    cmd.add_argument("--prompt", help="typed prompt (sources prompt and blend)")
    cmd.add_argument("--negative-prompt", help="typed negative prompt (sources prompt and blend)")
    cmd.add_argument(
        "--alpha",
        type=float,
        default=SourceSettings.alpha,
        help="the vault's share in blend (default %(default)s)",
    )
    cmd.add_argument(
        "--k", type=int, default=SourceSettings.k, help="neighbours per item (vault, blend)"
    )
    cmd.add_argument("--projector", default=SourceSettings.projector, help="projector model URI")
    cmd.add_argument(
        "--tracking-uri", help="MLflow registry (default: $LUNA_MLFLOW_URI, else the home's own)"
    )
    cmd.add_argument(
        "--strength",
        type=float,
        default=SamplerSettings.strength,
        help="img2img strength in (0, 1] (default %(default)s)",
    )
    cmd.add_argument(
        "--steps",
        type=int,
        default=SamplerSettings.steps,
        help="sampler steps (default %(default)s)",
    )
    cmd.add_argument(
        "--guidance",
        type=float,
        default=SamplerSettings.guidance_scale,
        help="classifier-free guidance scale (default %(default)s)",
    )
    cmd.add_argument("--seed", type=int, default=SamplerSettings.seed)
    cmd.add_argument(
        "--batch-size",
        type=int,
        default=SamplerSettings.batch_size,
        help="a cap on items per VAE and UNet call (default: none; the memory budget splits a "
        "pass)",
    )
    cmd.add_argument(
        "--memory-budget",
        type=float,
        default=SamplerSettings.memory_budget_mb,
        metavar="MB",
        help="what one VAE or UNet call may take (default: 80%% of free GPU memory, half the RAM "
        "on a CPU)",
    )
    cmd.add_argument(
        "--lora",
        action="append",
        metavar="NAME:WEIGHT",
        help="a LoRA every item gets (repeat for more), from the folders of [models] lora_dirs",
    )
    cmd.add_argument(
        "--lora-from",
        choices=["vault"],
        help="vault: each item also gets the weighted union of its k neighbours' LoRAs",
    )
    cmd.add_argument(
        "--lora-cap",
        type=int,
        default=DEFAULT_LORA_CAP,
        help="--lora-from vault: the strongest this many per item (default %(default)s)",
    )
    cmd.add_argument(
        "--per-block",
        action="store_true",
        help="the composition blocks see the whole image's answer, the others each item's own",
    )
    cmd.add_argument(
        "--composition-blocks",
        default=",".join(SamplerSettings.composition_blocks),
        help="--per-block: which UNet blocks see the whole image's answer (default %(default)s)",
    )
    cmd.add_argument(
        "--piece-mode",
        default=SourceSettings.piece_mode,
        choices=["concat", "blend"],
        help="how a detection's prompt piece meets its item's answer (default %(default)s)",
    )
    cmd.add_argument(
        "--ip-adapter", help="IP-Adapter weights (.safetensors with image_encoder/ beside it)"
    )
    cmd.add_argument(
        "--ip-weight", type=float, help="IP-Adapter scale (default 0.4 chess, 0.5 detailer)"
    )
    cmd.add_argument(
        "--sequential", action="store_true", help="one item per sampler call (for comparison)"
    )
    cmd.add_argument("--home", help="Luna home folder (default: $LUNA_HOME, else ./luna_home)")
    cmd.add_argument("--device", default=AUTO, help="auto | cpu | cuda[:N]")
    cmd.set_defaults(func=cmd_refine)
