"""The `refine` domain: refining a person's images is an action, not an asset: the job
`refine_images`, launched from the UI's launchpad, writes each result under the home's `refined/`
folder and shows before/after thumbnails as run metadata."""

import base64
import io
import time
from pathlib import Path

import dagster as dg

from luna_assets.automation import GPU_POOL
from luna_assets.launchpad import launchpad_config, read_config
from luna_assets.metadata import md_table
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.ask.boxes import Box
from luna_core.catalog.library_view import library_paths
from luna_core.errors import LunaError
from luna_core.images import read_picture
from luna_core.refine.options import RefineOptions
from luna_core.refine.refine_report import save_image
from luna_core.session import LunaSession

REFINE_JOB = "refine_images"
THUMBNAIL = 256
# Every refine option is a launchpad field.
OMITTED: dict[str, str] = {}
RefineConfig = launchpad_config(
    "RefineConfig",
    RefineOptions,
    "Launchpad settings: which images, which mode (boxes or detections: the detailer; none: the "
    "chess refiner), and the refine options `luna refine` takes.",
    OMITTED,
    {
        "images": (list[str], [], "image files to refine"),
        "where": (
            str,
            "",
            "and/or library images matching an SQL condition, e.g. prompt ILIKE '%portrait%'",
        ),
        "limit": (int, 8, "at most this many images from `where`"),
        "boxes": (
            list[str],
            [],
            "X,Y,W,H boxes for the detailer, applied to every image; empty: chess refiner",
        ),
        "detections": (
            str,
            "",
            "a detector's output for the detailer (COCO .json, YOLO .txt, a label-mask PNG, a "
            "mask folder); {stem} becomes each image's file stem. The masks decide what is "
            "pasted back",
        ),
    },
)


def _thumbnail(image) -> str:
    copy = image.convert("RGB")
    copy.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    copy.save(buffer, format="PNG")
    return f"![]({'data:image/png;base64,' + base64.b64encode(buffer.getvalue()).decode()})"


@dg.op(name="refine", tags={"kind": "pytorch"}, pool=GPU_POOL)
def refine_op(
    context: dg.OpExecutionContext,
    config: RefineConfig,
    luna: LunaHomeResource,
    models: LunaModelsResource,
) -> list[str]:
    """Refine every configured image; a bad image is reported by name and the others still go on."""

    home = luna.luna_home
    try:
        options = read_config(RefineOptions, config, OMITTED)
        settings, source = options.settings(), options.source_settings()
    except LunaError as exc:
        raise dg.Failure(f"refine settings: {exc}") from None
    boxes = [Box.parse(b) for b in config.boxes]
    images = list(config.images) + (
        library_paths(home, config.where, config.limit) if config.where else []
    )
    if not images:
        raise dg.Failure(
            "no images to refine: give `images`, or `where` (a condition over the library view)"
        )
    # scipy (the detections reader): only a refine run pays its import, not the definitions
    from luna_core.refine.detections import read_detections

    session = LunaSession(home, models.resolve(home), models.device, models.dtype)
    refiner = session.refiner(source, options.ip_adapter)
    home.refined_dir.mkdir(parents=True, exist_ok=True)
    done, failed = [], []
    for path in images:
        try:
            image = read_picture(path)
            started = time.perf_counter()
            progress = lambda name, n, total, file=Path(path).name: context.log.info(  # noqa: E731
                f"{file}: {name} {n}/{total}"
            )
            found = (
                read_detections(
                    config.detections.replace("{stem}", Path(path).stem), image.size, path
                )
                if config.detections
                else None
            )
            refined, report = refiner.refine(image, settings, boxes, found, progress)
            out = save_image(
                refined,
                home.refined_dir / f"{Path(path).stem}.{report.mode}.{context.run.run_id[:8]}.png",
                report,
            )
        except LunaError as exc:
            context.log.error(f"{path}: {exc}")
            failed.append({"image": path, "reason": str(exc)})
            continue
        context.log.info(
            f"{path} → {out} ({time.perf_counter() - started:.1f}s)\n{report.summary()}"
        )
        done.append(
            {
                "image": path,
                "output": str(out),
                "mode": report.mode,
                "items": report.items,
                "sampler calls": report.sampler_calls,
                "seconds": f"{report.seconds:.2f}",
                "LoRAs": ", ".join(a["name"] for a in report.loras.get("adapters", [])) or "–",
                "peak MB": f"{report.peak_memory_mb:,.0f}"
                if report.peak_memory_mb is not None
                else "–",
                "before": _thumbnail(image),
                "after": _thumbnail(refined),
                "summary": report.summary(),
            }
        )
    metadata = {
        "refined": len(done),
        "failed": len(failed),
        "source": source.source,
        "mode": "detailer"
        if boxes or config.detections
        else f"chess {settings.grid}x{settings.grid}",
        "before / after": md_table(
            done,
            ["before", "after", "items", "sampler calls", "LoRAs", "peak MB", "seconds", "output"],
        ),
        "failures": md_table(failed, ["image", "reason"]),
        "runs": dg.MetadataValue.md(
            "\n\n".join(f"**{Path(d['image']).name}**\n```\n{d['summary']}\n```" for d in done)
        ),
        "outputs": dg.MetadataValue.path(str(home.refined_dir)),
    }
    if failed:
        raise dg.Failure(
            f"{len(failed)} of {len(images)} image(s) could not be refined: "
            + "; ".join(f"{f['image']}: {f['reason']}" for f in failed),
            metadata=metadata,
        )
    context.add_output_metadata(metadata)
    return [d["output"] for d in done]


@dg.job(
    name=REFINE_JOB,
    tags={"luna/domain": "refine"},
    description="Refine images tile by tile (chess) or box by box (detailer), each item "
    "conditioned by its own "
    "vault or projector answer; outputs under the home's refined/ folder.",
)
def refine_images():
    refine_op()
