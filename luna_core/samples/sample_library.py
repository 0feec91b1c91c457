"""A sample library like a heavy user's: every generator's format, prompts reused at several seeds,
prompts longer than CLIP's 77 tokens, and a folder of broken files. Deterministic for a seed."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from luna_core.prompts.syntax import syntax_for
from luna_core.samples.pictures import PromptSpec, draw_picture, random_prompt
from luna_core.samples.writers.registry import (
    FORMATS,
    Generation,
    a1111_infotext,
    comfy_simple_graph,
    encoded_prompt,
    insert_png_chunks,
    jpeg_bytes,
    png_bytes,
    png_chunk,
    tiff_block,
    write_a1111_png,
)

LORA_NAMES = ("detail_tweaker_xl", "film_grain_style", "pixel_art_xl", "watercolor_v2")
MODELS = (
    ("sd_xl_base_1.0", "31e35c80fc"),
    ("juggernautXL_v9", "c9e3e68f89"),
    ("ponyDiffusionV6XL", "67ab2fd8ec"),
)


@dataclass(frozen=True)
class SampleFile:
    """A generated file and what ingesting it must yield."""

    path: Path
    kind: str
    generator: str | None = None  # expected generator for files that ingest
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    long_prompt: bool = False
    quarantine_reason: str | None = None  # expected reason for files that must be quarantined
    warning: str | None = None  # a substring the catalog must record for this file


@dataclass
class SampleLibrary:
    root: Path
    files: list[SampleFile]

    @property
    def images(self) -> list[SampleFile]:
        return [f for f in self.files if f.quarantine_reason is None]

    @property
    def quarantined(self) -> list[SampleFile]:
        return [f for f in self.files if f.quarantine_reason is not None]


def _generation(
    rng: random.Random, spec: PromptSpec, size: tuple[int, int], generator: str = ""
) -> Generation:
    model, model_hash = rng.choice(MODELS)
    loras = (
        [(rng.choice(LORA_NAMES), round(rng.uniform(0.3, 1.0), 2))] if rng.random() < 0.5 else []
    )
    return Generation(
        spec=spec,
        seed=rng.randrange(2**32),
        steps=rng.choice((20, 25, 30, 40)),
        cfg=rng.choice((4.5, 6.0, 7.0, 7.5)),
        width=size[0] * 4,
        height=size[1] * 4,
        model=model,
        model_hash=model_hash,
        loras=loras,
        syntax=syntax_for(generator),
    )


def make_sample_library(
    dest: str | os.PathLike[str],
    n_images: int = 60,
    seed: int = 0,
    size: tuple[int, int] = (256, 256),
    broken: bool = True,
    grain: float = 0.0,
    on_progress: Callable[[int, int], None] | None = None,
) -> SampleLibrary:
    """Write `n_images` generated images (cycling through every format) under `dest`, plus broken
    files."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_prompts = max(1, n_images // 3)  # each prompt at about three seeds, as people reroll
    # A third of the prompts weight a tag, in their writer's own syntax, as real libraries' prompts
    # do.
    pool = [
        random_prompt(rng, long=(i % 7 == 3), emphasis=1.2 if i % 3 == 1 else None)
        for i in range(n_prompts)
    ]
    files: list[SampleFile] = []
    for i in range(n_images):
        spec = pool[rng.randrange(len(pool))] if i >= len(pool) else pool[i]
        kind, writer, generator = FORMATS[i % len(FORMATS)]
        gen = _generation(rng, spec, size, generator)
        data, ext = writer(draw_picture(spec, gen.seed, size, grain), gen)
        folder = root / kind.split("_")[0]
        folder.mkdir(exist_ok=True)
        path = folder / f"{i:05d}_{kind}.{ext}"
        path.write_bytes(data)
        has_prompt = generator != "none"
        files.append(
            SampleFile(
                path,
                kind,
                generator,
                prompt=encoded_prompt(kind, gen) if has_prompt else None,
                negative_prompt=(gen.negative or None) if has_prompt else None,
                seed=gen.seed if has_prompt else None,
                long_prompt=spec.long,
            )
        )
        if on_progress:
            on_progress(i + 1, n_images)
    if broken:
        files.extend(_broken_files(root / "broken", files, size))
    return SampleLibrary(root, files)


def _png_1bit(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of any size, written row by row: a few KB for a huge, zero-filled
    picture."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def _broken_files(folder: Path, good: list[SampleFile], size: tuple[int, int]) -> list[SampleFile]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1234)
    spec = random_prompt(rng)
    gen = Generation(spec=spec, seed=42)
    picture = draw_picture(spec, 42, size)
    valid_png, _ = write_a1111_png(picture, gen)
    out: list[SampleFile] = []

    def put(name: str, data: bytes, **expect) -> None:
        path = folder / name
        path.write_bytes(data)
        out.append(SampleFile(path, "broken:" + name, **expect))

    put("empty.png", b"", quarantine_reason="empty_file")
    put("truncated.png", valid_png[: len(valid_png) * 3 // 5], quarantine_reason="truncated")
    put(
        "not_an_image.png",
        b"Just some notes about my renders.\n" * 20,
        quarantine_reason="not_an_image",
    )
    put(
        "really_a_png.jpg",
        valid_png,
        generator="AUTOMATIC1111",
        prompt=gen.prompt,
        negative_prompt=gen.negative or None,
        seed=42,
        warning="content is PNG",
    )
    put("bomb.png", _png_1bit(16384, 16384), quarantine_reason="too_many_pixels")
    huge = zlib.compress(b"masterpiece, " * (10 * 1024 * 1024 // 13), 9)
    put(
        "giant_text_chunk.png",
        insert_png_chunks(png_bytes(picture), [png_chunk(b"zTXt", b"parameters\x00\x00" + huge)]),
        quarantine_reason="metadata_too_large",
    )
    bad_utf8 = a1111_infotext(gen).encode("utf-8").replace(b"a ", b"a \xff\xfe ", 1)
    put(
        "bad_utf8.png",
        insert_png_chunks(png_bytes(picture), [png_chunk(b"tEXt", b"parameters\x00" + bad_utf8)]),
        generator="AUTOMATIC1111",
        seed=42,
        warning="not valid UTF-8",
    )
    garbage = b"UNICODE\x00" + bytes(rng.randrange(256) for _ in range(301)) + b"\x00\xd8"
    put(
        "utf16_garbage.jpg",
        jpeg_bytes(picture, [b"Exif\x00\x00" + tiff_block({}, {0x9286: (7, garbage)}, True)]),
        generator="unknown",
        warning="UTF-16",
    )
    put(
        "comfy_malformed.png",
        png_bytes(
            picture, text=[("prompt", '{"3": {"class_type": "KSampler", "inputs": {"seed": 1,')]
        ),
        generator="ComfyUI",
        warning="not valid JSON",
    )
    put(
        "comfy_deeply_nested.png",
        png_bytes(picture, text=[("prompt", "[" * 100_000 + "]" * 100_000)]),
        generator="ComfyUI",
        warning="nested too deeply",
    )
    cyclic = comfy_simple_graph(gen)
    cyclic["20"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["21", 0], "conditioning_2": ["6", 0]},
    }
    cyclic["21"] = {
        "class_type": "ConditioningCombine",
        "inputs": {"conditioning_1": ["20", 0], "conditioning_2": ["20", 0]},
    }
    cyclic["3"]["inputs"]["positive"] = ["20", 0]
    put(
        "comfy_cycle.png",
        png_bytes(picture, text=[("prompt", json.dumps(cyclic))]),
        generator="ComfyUI",
        prompt=gen.prompt,
        negative_prompt=gen.negative or None,
        seed=42,
    )
    first = next((f for f in good if f.quarantine_reason is None), None)
    if first is not None:
        copy = folder / f"copy_of_{first.path.name}"
        shutil.copyfile(first.path, copy)
        out.append(
            SampleFile(
                copy,
                "broken:duplicate",
                first.generator,
                first.prompt,
                first.negative_prompt,
                first.seed,
            )
        )
    for name, target in (
        ("loop_a.png", "loop_b.png"),
        ("loop_b.png", "loop_a.png"),
        ("dangling.png", "gone.png"),
    ):
        link = folder / name
        if not link.is_symlink():
            link.symlink_to(target)
        reason = "broken_link" if name == "dangling.png" else "symlink_loop"
        out.append(SampleFile(link, "broken:" + name, quarantine_reason=reason))
    back = folder / "back_to_library"
    if not back.is_symlink():
        back.symlink_to("..", target_is_directory=True)
    out.append(SampleFile(back, "broken:folder_loop", quarantine_reason="symlink_loop"))
    return out
