"""`luna refine`: the chess refiner (no boxes) or the semantic detailer (boxes), one sampler call
per pass. Its options are luna_core.refine.options.RefineOptions, declared once."""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

from luna_cli.declared import add_declared, read_declared
from luna_core.ask.boxes import Box, load_boxes
from luna_core.errors import QueryError
from luna_core.home.home import LunaHome
from luna_core.images import read_picture
from luna_core.models.profiles import AUTO
from luna_core.refine.detections import read_detections
from luna_core.refine.options import RefineOptions

# Every refine option is a flag of `luna refine`.
OMITTED: dict[str, str] = {}


def cmd_refine(args: argparse.Namespace) -> int:
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.refine.refine_report import save_image
    from luna_core.session import LunaSession

    home = LunaHome.existing(args.home)
    options = read_declared(RefineOptions, args, OMITTED)
    settings, source = options.settings(), options.source_settings()
    boxes = [Box.parse(b) for b in args.box or []] + (load_boxes(args.boxes) if args.boxes else [])
    image = read_picture(args.image)
    detections = read_detections(args.detections, image.size, args.image) if args.detections else []
    if detections and boxes:
        raise QueryError("give boxes or --detections, not both")
    refiner = LunaSession.open(home, device=args.device).refiner(source, options.ip_adapter)
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name) or bars.setdefault(
            name, tqdm(total=total, desc=f"refine {name}", unit="item")
        )
        bar.update(done - bar.n)

    if detections:
        shown = ", ".join(f"{d.label or '?'} at {d.box}" for d in detections[:8])
        more = " …" if len(detections) > 8 else ""
        print(f"{len(detections)} detections from {args.detections}: {shown}{more}")
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
        help="refine an image tile by tile (chess) or box by box (detailer), each item "
        "conditioned by its own vault or projector answer",
    )
    cmd.add_argument("image", help="PNG, JPEG or WebP file")
    cmd.add_argument("--out", required=True, help="output file (.png, .jpg or .webp)")
    cmd.add_argument("--box", action="append", help="detailer: a box X,Y,W,H (repeat for more)")
    cmd.add_argument("--boxes", help="detailer: a JSON file of boxes ([[x, y, w, h], ...])")
    cmd.add_argument(
        "--detections",
        help="detailer: a detector's output (COCO .json with bbox or segmentation, YOLO .txt, a "
        "label-mask PNG, or a folder of masks); the mask decides what is pasted back",
    )
    add_declared(cmd, RefineOptions, OMITTED)
    cmd.add_argument("--home", help="Luna home folder (default: $LUNA_HOME, else ./luna_home)")
    cmd.add_argument("--device", default=AUTO, help="auto | cpu | cuda[:N]")
    cmd.set_defaults(func=cmd_refine)
