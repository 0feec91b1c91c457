"""Ingest speed on a generated library: metadata parse vs full pixel decode, whole ingest, re-scan.

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

from luna_core.containers import probe_image
from luna_core.errors import BadFileError
from luna_core.ingest import IngestOptions, ingest
from luna_core.metadata import parse_generation
from luna_core.samples import make_sample_library


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and "broken" not in p.parts)


def metadata_parse(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        try:
            parse_generation(probe_image(path.read_bytes()).items)
        except BadFileError:
            pass
    return time.perf_counter() - start


def pixel_decode(files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.convert("RGB").load()
    return time.perf_counter() - start


def best_of(fn, files, repeats: int) -> float:
    return min(fn(files) for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--size", type=int, default=512, help="picture side in pixels")
    parser.add_argument("--grain", type=float, default=6.0, help="pixel noise, gives realistic file sizes (0: flat)")
    parser.add_argument("--library", help="reuse (or create) the library here instead of a temp folder")
    parser.add_argument("--workers", type=int, default=0, help="ingest worker processes (0: one per core)")
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
        make_sample_library(library_root, args.images, seed=11, size=(args.size, args.size), grain=args.grain)
        marker.write_text(json.dumps(wanted))
        print(f"generated {args.images} images of {args.size}x{args.size} in {time.perf_counter() - start:.1f}s")
    files = _files(library_root)
    total_mb = sum(p.stat().st_size for p in files) / 1e6
    print(f"library: {len(files)} readable files, {total_mb:.0f} MB, {os.cpu_count()} cores, Python {sys.version.split()[0]}")

    pixel_decode(files[:200])  # warm the page cache and the decoders
    t_meta = best_of(metadata_parse, files, args.repeats)
    t_pixels = best_of(pixel_decode, files, args.repeats)

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
    }
    print()
    print(f"{'metadata parse (1 process, read+probe+parse)':48s} {figures['metadata_parse_files_per_s']:10,.0f} files/s")
    print(f"{'full pixel decode (1 process, Pillow load)':48s} {figures['pixel_decode_files_per_s']:10,.0f} files/s")
    print(f"{'  ratio: metadata parse / pixel decode speed':48s} {figures['metadata_parse_speedup_vs_pixel_decode']:10.1f} x")
    print(f"{'whole ingest (hash+parse+catalog, all cores)':48s} {figures['whole_ingest_files_per_s']:10,.0f} files/s"
          f"  ({t_ingest:.1f}s)")
    print(f"{'re-ingest, nothing changed (stat only)':48s} {figures['rescan_files_per_s']:10,.0f} files/s"
          f"  ({t_rescan:.2f}s, {figures['rescan_speedup_vs_first_ingest']:.0f}x faster than the first)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
