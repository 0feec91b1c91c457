"""Ingest speed on a generated library: metadata parse vs full pixel decode, whole ingest, re-scan;
and Luna's parse beside sd-parsers 0.6 (when installed: an optional benchmark dependency, never a
runtime one) on the same files, for speed and for the share of files whose prompt each reads
right.

    .venv/bin/pip install sd-parsers==0.6   # optional: the peer parser
    .venv/bin/python benchmarks/bench_ingest.py --images 5000 --size 512

Every figure is measured in this one run on the same files (warm page cache: the library was
just written or read), so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from luna_core.containers.probe import probe_image
from luna_core.errors import BadFileError
from luna_core.ingest.run import IngestOptions, ingest
from luna_core.metadata.dispatch import parse_generation
from luna_core.samples import make_sample_library


def _files(root: Path) -> list[Path]:
    return sorted(
        p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and "broken" not in p.parts
    )


def metadata_parse(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        try:
            parse_generation(probe_image(path.read_bytes()).items)
        except BadFileError:
            pass
    return time.perf_counter() - start


def luna_prompts(files: list[Path]) -> dict[Path, str | None]:
    out = {}
    for path in files:
        try:
            out[path] = parse_generation(probe_image(path.read_bytes()).items).prompt
        except BadFileError:
            out[path] = None
    return out


def peer_prompts(files: list[Path]) -> dict[Path, str | None] | None:
    """sd-parsers' positive prompt per file (its first), or None when it is not installed."""
    try:
        from sd_parsers import ParserManager  # optional benchmark dependency, never a runtime one
    except ImportError:
        return None
    manager, out = ParserManager(), {}
    for path in files:
        try:
            info = manager.parse(str(path))
        except Exception:  # a peer's failure on a file counts as no prompt read  # noqa: BLE001
            info = None
        prompts = [p.value for p in info.prompts] if info is not None else []
        out[path] = prompts[0] if prompts else None
    return out


def timed(fn, files) -> tuple[float, dict | None]:
    start = time.perf_counter()
    result = fn(files)
    return time.perf_counter() - start, result


def pixel_decode(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.convert("RGB").load()
    return time.perf_counter() - start


def best_of(fn, files, repeats: int) -> float:
    return min(fn(files) for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=512, help="picture side in pixels")
    parser.add_argument(
        "--grain", type=float, default=6.0, help="pixel noise, gives realistic file sizes (0: flat)"
    )
    parser.add_argument(
        "--library", help="reuse (or create) the library here instead of a temp folder"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="ingest worker processes (0: one per core)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="luna-bench-"))
    library_root = Path(args.library) if args.library else work / "library"
    marker = library_root.parent / f".{library_root.name}.bench.json"
    wanted = {"images": args.images, "size": args.size, "grain": args.grain}
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(library_root, ignore_errors=True)
        start = time.perf_counter()
        library = make_sample_library(
            library_root, args.images, seed=11, size=(args.size, args.size), grain=args.grain
        )
        marker.write_text(json.dumps(wanted))
        expected = {str(f.path.relative_to(library_root)): f.prompt for f in library.images}
        (library_root.parent / f".{library_root.name}.prompts.json").write_text(
            json.dumps(expected)
        )
        print(
            f"generated {args.images} images of {args.size}x{args.size} in "
            f"{time.perf_counter() - start:.1f}s"
        )
    files = _files(library_root)
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    print(
        f"library: {len(files)} readable files, {total_mb:.0f} MB, {os.cpu_count()} cores, "
        f"Python {sys.version.split()[0]}"
    )

    pixel_decode(files[:200])  # warm the page cache and the decoders
    t_meta = best_of(metadata_parse, files, args.repeats)
    t_pixels = best_of(pixel_decode, files, args.repeats)

    expected_path = library_root.parent / f".{library_root.name}.prompts.json"
    expected = json.loads(expected_path.read_text()) if expected_path.exists() else {}
    peer_figures = {}
    if peer_prompts(files[:50]) is not None:  # the warm-up pass of both parsers
        luna_prompts(files[:50])
        t_luna, luna_read = min(
            (timed(luna_prompts, files) for _ in range(args.repeats)), key=lambda r: r[0]
        )
        t_peer, peer_read = min(
            (timed(peer_prompts, files) for _ in range(args.repeats)), key=lambda r: r[0]
        )
        with_prompt = [p for p in files if expected.get(str(p.relative_to(library_root)))]
        right = {
            name: sum(read[p] == expected[str(p.relative_to(library_root))] for p in with_prompt)
            for name, read in (("luna", luna_read), ("sd_parsers", peer_read))
        }
        peer_figures = {
            "luna_parse_files_per_s": len(files) / t_luna,
            "sd_parsers_files_per_s": len(files) / t_peer,
            "luna_speedup_vs_sd_parsers": t_peer / t_luna,
            "files_with_a_prompt": len(with_prompt),
            "luna_prompts_right": right["luna"],
            "sd_parsers_prompts_right": right["sd_parsers"],
        }

    db = work / "catalog.duckdb"
    t0 = time.perf_counter()
    first = ingest(db, [str(library_root)], IngestOptions(workers=args.workers, progress=False))
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ingest(db, [str(library_root)], IngestOptions(workers=args.workers, progress=False))
    t_rescan = time.perf_counter() - t0
    assert again.files_read == 0 and again.unchanged == first.new

    figures = {
        "files": len(files),
        "metadata_parse_files_per_s": len(files) / t_meta,
        "pixel_decode_files_per_s": len(files) / t_pixels,
        "metadata_parse_speedup_vs_pixel_decode": t_pixels / t_meta,
        "whole_ingest_files_per_s": first.files_read / t_ingest,
        "whole_ingest_seconds": t_ingest,
        "rescan_unchanged_seconds": t_rescan,
        "rescan_files_per_s": again.unchanged / t_rescan,
        "rescan_speedup_vs_first_ingest": t_ingest / t_rescan,
        **peer_figures,
    }
    print()
    print(
        f"{'metadata parse (1 process, read+probe+parse)':48s} "
        f"{figures['metadata_parse_files_per_s']:10,.0f} files/s"
    )
    print(
        f"{'full pixel decode (1 process, Pillow load)':48s} "
        f"{figures['pixel_decode_files_per_s']:10,.0f} files/s"
    )
    print(
        f"{'  ratio: metadata parse / pixel decode speed':48s} "
        f"{figures['metadata_parse_speedup_vs_pixel_decode']:10.1f} x"
    )
    print(
        f"{'whole ingest (hash+parse+catalog, all cores)':48s} "
        f"{figures['whole_ingest_files_per_s']:10,.0f} files/s"
        f"  ({t_ingest:.1f}s)"
    )
    print(
        f"{'re-ingest, nothing changed (stat only)':48s} {figures['rescan_files_per_s']:10,.0f} "
        "files/s"
        f"  ({t_rescan:.2f}s, {figures['rescan_speedup_vs_first_ingest']:.0f}x faster than the "
        "first)"
    )
    if peer_figures:
        f = peer_figures
        print(
            f"{'Luna parse (path -> prompt, 1 process)':48s} "
            f"{f['luna_parse_files_per_s']:10,.0f} files/s"
        )
        print(
            f"{'sd-parsers 0.6 (path -> prompt, 1 process)':48s} "
            f"{f['sd_parsers_files_per_s']:10,.0f} files/s"
        )
        print(f"{'  ratio: Luna / sd-parsers speed':48s} {f['luna_speedup_vs_sd_parsers']:10.1f} x")
        print(
            f"{'prompt read right, of files that have one':48s} Luna {f['luna_prompts_right']}, "
            "sd-parsers "
            f"{f['sd_parsers_prompts_right']}, of {f['files_with_a_prompt']}"
        )
    else:
        print(
            "sd-parsers is not installed: `.venv/bin/pip install sd-parsers==0.6` to measure it "
            "beside Luna"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
