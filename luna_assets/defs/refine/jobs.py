"""The `refine` domain: refining a person's images is an action, not an asset: the job
`refine_images`, launched from the UI's launchpad, writes each result under the home's `refined/`
folder and shows before/after thumbnails as run metadata."""

import base64
import io
import time
from pathlib import Path

import dagster as dg

from luna_assets.automation import GPU_POOL
from luna_assets.metadata import md_table
from luna_assets.resources import LunaHomeResource, LunaModelsResource
from luna_core.ask.boxes import Box
from luna_core.catalog.library_view import library_paths
from luna_core.errors import LunaError
from luna_core.images import read_picture
from luna_core.refine.detections import read_detections
from luna_core.refine.options import (
    DEFAULT_LORA_CAP,
    DEFAULT_PROJECTOR,
    RefineOptions,
    RefineSettings,
    SamplerSettings,
    SourceSettings,
)
from luna_core.refine.refine_report import save_image
from luna_core.refine.refiner import Refiner

REFINE_JOB = "refine_images"
THUMBNAIL = 256
_REFINE, _SAMPLER, _SOURCE = RefineSettings(), SamplerSettings(), SourceSettings()


class RefineConfig(dg.Config):
    """Launchpad settings: which images, which mode (boxes: the detailer; none: the chess
    refiner), which source."""

    images: list[str] = []  # image files to refine
    # and/or library images matching an SQL condition, e.g. prompt ILIKE '%portrait%'
    where: str = ""
    limit: int = 8  # at most this many images from `where`
    boxes: list[
        str
    ] = []  # X,Y,W,H boxes for the detailer, applied to every image; empty: chess refiner
    # A detector's output for the detailer (COCO .json, YOLO .txt, a label-mask PNG, a mask folder);
    # `{stem}` becomes each image's file stem (YOLO writes one .txt per image). The masks decide
    # what is pasted back.
    detections: str = ""
    grid: int = _REFINE.grid
    source: str = _SOURCE.source  # vault | projector | prompt | blend
    prompt: str = ""
    negative_prompt: str = ""
    alpha: float = _SOURCE.alpha
    k: int = _SOURCE.k
    projector: str = DEFAULT_PROJECTOR
    tracking_uri: str = ""
    strength: float = _SAMPLER.strength
    steps: int = _SAMPLER.steps
    guidance: float = _SAMPLER.guidance_scale
    seed: int = _SAMPLER.seed
    # a cap on items per call; 0: only the memory budget splits a pass
    batch_size: int = _SAMPLER.batch_size
    # 0: 80 % of free GPU memory, half the RAM on a CPU
    memory_budget_mb: float = _SAMPLER.memory_budget_mb
    # IP-Adapter weights (.safetensors with image_encoder/ beside it); empty: text only
    ip_adapter: str = ""
    ip_weight: float = -1.0  # negative: 0.4 for the chess refiner, 0.5 for the detailer
    loras: list[
        str
    ] = []  # NAME:WEIGHT LoRAs every item gets, from the folders of [models] lora_dirs
    lora_from: str = ""  # vault: each item also gets the weighted union of its k neighbours' LoRAs
    lora_cap: int = DEFAULT_LORA_CAP  # lora_from vault: the strongest this many per item
    # the composition blocks see the whole image's answer, the others each item's own
    per_block: bool = False
    composition_blocks: list[str] = list(_SAMPLER.composition_blocks)
    # how a detection's prompt piece meets its answer: concat or blend
    piece_mode: str = _SOURCE.piece_mode

    def settings(self) -> tuple[RefineSettings, SourceSettings]:
        refine = RefineOptions(
            grid=self.grid,
            strength=self.strength,
            steps=self.steps,
            guidance=self.guidance,
            seed=self.seed,
            batch_size=self.batch_size,
            memory_budget_mb=self.memory_budget_mb,
            ip_weight=None if self.ip_weight < 0 else self.ip_weight,
            loras=tuple(self.loras),
            lora_from=self.lora_from,
            lora_cap=self.lora_cap,
            per_block=self.per_block,
            composition_blocks=tuple(self.composition_blocks),
        ).settings()
        source = SourceSettings(
            self.source,
            self.prompt or None,
            self.negative_prompt or None,
            self.alpha,
            self.k,
            projector=self.projector,
            tracking_uri=self.tracking_uri or None,
            piece_mode=self.piece_mode,
        )
        return refine, source


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
        settings, source = config.settings()
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
    refiner = Refiner(
        home,
        models.resolve(home),
        source,
        device=models.device,
        dtype=models.dtype,
        ip_adapter=config.ip_adapter or None,
    )
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
