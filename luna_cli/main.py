"""`luna`: the command line. Imports stay inside commands so `luna --help` starts instantly."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

DEMO_MARKER = "sample_library.json"


def _home(args: argparse.Namespace):
    from luna_core.settings import LunaHome

    return LunaHome.resolve(args.home).ensure()


def _print_table(rows: list[dict], columns: list[str], widths: dict[str, int] | None = None) -> None:
    widths = widths or {}
    def fit(value, width):
        text = "" if value is None else str(value).replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"
    sizes = {c: min(widths.get(c, 60), max([len(c)] + [len(fit(r.get(c), widths.get(c, 60))) for r in rows])) for c in columns}
    print("  " + "  ".join(c.ljust(sizes[c]) for c in columns))
    for row in rows:
        print("  " + "  ".join(fit(row.get(c), sizes[c]).ljust(sizes[c]) for c in columns))


# ---------------------------------------------------------------- demo


def _ensure_samples(home, n_images: int, size: int, seed: int) -> Path:
    """Generate the sample library once per (n, size, seed); a rerun reuses it so ingest stays incremental."""
    from tqdm.auto import tqdm

    from luna_core.samples import make_sample_library

    marker = home.root / DEMO_MARKER
    wanted = {"images": n_images, "size": size, "seed": seed}
    if marker.exists() and home.samples_dir.exists():
        try:
            if json.loads(marker.read_text()) == wanted:
                print(f"Sample library already at {home.samples_dir} ({n_images} images); reusing it.")
                return home.samples_dir
        except ValueError:
            pass
    bar = tqdm(total=n_images, unit="img", desc="sample library")
    library = make_sample_library(home.samples_dir, n_images, seed=seed, size=(size, size),
                                  on_progress=lambda done, total: bar.update(done - bar.n))
    bar.close()
    marker.write_text(json.dumps(wanted))
    print(f"Sample library under {library.root}: {n_images} generated images, plus {len(library.files) - n_images} "
          f"odd or broken entries ({len(library.quarantined)} of them must end in quarantine)")
    return home.samples_dir


# The demo library is small: its projector may train on a few dozen pairs (the default refuses < 32).
DEMO_PROJECTOR_CONFIG = {"arch": "resampler", "hidden": 64, "heads": 2, "layers": 2, "epochs": 10, "batch_size": 16,
                         "min_train_pairs": 8, "min_val_pairs": 2}


def run_build_all(home, log_level: str = "INFO", projector_config: dict | None = None):
    """Materialize every asset through the same Definitions the UI loads, on the home's Dagster instance."""
    import dagster as dg

    from dagster_project.definitions import BUILD_ALL_JOB, build_definitions

    defs = build_definitions(str(home.root))
    job = defs.resolve_job_def(BUILD_ALL_JOB)
    instance = dg.DagsterInstance.from_config(str(home.dagster_home))
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}
    if projector_config:
        run_config["ops"] = {"projector": {"config": projector_config}}
    return job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False)


def cmd_demo(args: argparse.Namespace) -> int:
    home = _home(args)
    started = time.perf_counter()
    print(f"Luna home: {home.root}")
    samples = _ensure_samples(home, args.images, args.size, args.seed)
    home.add_roots([samples])
    recorded = home.model_profile()
    if recorded not in (None, args.profile):
        print(f"error: {home.root} was built with the '{recorded}' model profile; use another --home", file=sys.stderr)
        return 2
    home.set_model_profile(args.profile)
    print(f"Model profile '{args.profile}'" + (" (tiny random-weight encoders built locally: their numbers are not CLIP's)"
                                             if args.profile == "tiny" else ""))
    print("Materializing every Luna asset through Dagster (job luna_build_all)…")
    result = run_build_all(home, projector_config=DEMO_PROJECTOR_CONFIG)
    if not _report_run(result):
        return 1
    _print_catalog_summary(home)
    _print_vault_summary(home)
    _print_index_summary(home)
    _demo_query(home)
    _demo_projector(home)
    print(f"\nBuilt in {time.perf_counter() - started:.1f}s:")
    print(f"  catalog      {home.catalog_path}")
    print(f"  vault        {home.vault_dir}")
    print(f"  Dagster runs {home.dagster_home}")
    print("\nOpen the Dagster UI on this home (then http://127.0.0.1:3000):")
    print(f"  luna ui --home {home.root}")
    print(f"  # same as: LUNA_HOME={home.root} DAGSTER_HOME={home.dagster_home} dagster dev -w workspace.yaml")
    return 0


def _report_run(result) -> bool:
    """Print step failures and check results of a Dagster run; True when it succeeded."""
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                print(f"FAILED in {event.step_key}: {event.step_failure_data.error.message}", file=sys.stderr)
        return False
    for check in result.get_asset_check_evaluations():
        print(f"  check {check.asset_key.to_user_string()}.{check.check_name}: {'passed' if check.passed else 'FAILED'}")
    return True


def _print_vault_summary(home) -> None:
    from luna_core import catalog
    from luna_core.vault.store import folder_bytes

    with catalog.open_catalog(home.catalog_path, read_only=True) as con:
        stores = con.execute("""
            SELECT s.kind, s.store_key, s.path, s.shapes,
                   coalesce(v.n, t.n, 0) AS rows, t.truncated,
                   (SELECT count(*) FROM embedding_failures f WHERE f.store_key = s.store_key) AS failed
            FROM vault_stores s
            LEFT JOIN (SELECT store_key, count(*) AS n FROM vision_rows GROUP BY 1) v USING (store_key)
            LEFT JOIN (SELECT store_key, count(*) AS n, sum(truncated::INT) AS truncated FROM text_rows GROUP BY 1) t
                   USING (store_key)
            ORDER BY s.kind DESC""").fetchall()
    if not stores:
        return
    print("\nVault (Zarr, float16):")
    rows = []
    for kind, key, path, shapes, n, truncated, failed in stores:
        size = folder_bytes(path)
        shape_text = ", ".join(f"{k} {list(v)}" for k, v in json.loads(shapes).items())
        rows.append({"store": kind, "rows": n, "shape per row": shape_text, "MB": f"{size / 1e6:.2f}",
                     "notes": (f"{truncated} prompts over 77 tokens" if truncated else "") +
                              (f" {failed} failed" if failed else "")})
    _print_table(rows, ["store", "rows", "shape per row", "MB", "notes"], {"shape per row": 60})


def _open_vault(home, args=None):
    from luna_core.models.profiles import resolve_profile
    from luna_core.vault.query import Vault

    profile = resolve_profile(getattr(args, "profile", None) or home.model_profile(), home.models_dir)
    return Vault(home.root, profile, device=getattr(args, "device", "auto") or "auto")


def _print_neighbors(neighbors, home=None) -> None:
    rows = [{"similarity": f"{n.similarity:.3f}", "weight": f"{n.weight:.2f}", "generator": n.generator,
             "prompt": n.prompt, "path": os.path.relpath(n.path, home.root) if home else n.path} for n in neighbors]
    _print_table(rows, ["similarity", "weight", "generator", "prompt", "path"], {"prompt": 60, "path": 50})


def _demo_query(home) -> None:
    """One vault answer on a crop of a sample image: what a user does first."""
    from luna_core.vault.query import Box

    sample = next(iter(sorted((home.samples_dir / "comfyui").glob("*.png"))), None)
    if sample is None:
        return
    from PIL import Image

    with Image.open(sample) as image:
        box = Box(image.width // 4, image.height // 4, image.width // 2, image.height // 2)
    vault = _open_vault(home)
    conditioning = vault.condition(sample, box, k=5)
    out = conditioning.save(home.root / "demo_condition.safetensors")
    print(f"\nVault query: the centre crop {box.x},{box.y},{box.width},{box.height} of {os.path.relpath(sample, home.root)}")
    _print_neighbors(conditioning.neighbors, home)
    print(f"  conditioning → {out} (prompt_embeds {list(conditioning.prompt_embeds.shape)}, "
          f"pooled {list(conditioning.pooled_prompt_embeds.shape)})")


def cmd_search(args: argparse.Namespace) -> int:
    from luna_core.vault.query import Box

    home = _home(args)
    vault = _open_vault(home, args)
    neighbors = vault.search(args.image, Box.parse(args.box) if args.box else None, args.k)
    if args.json:
        print(json.dumps([n.__dict__ for n in neighbors], indent=2, default=str))
    else:
        _print_neighbors(neighbors)
    return 0


def cmd_condition(args: argparse.Namespace) -> int:
    from luna_core.vault.query import Box

    home = _home(args)
    vault = _open_vault(home, args)
    box = Box.parse(args.box) if args.box else None
    if args.projector:
        conditioning = vault.condition_with_projector(args.image, args.projector, box, args.prompt, args.mode, args.alpha)
        print(f"projector {args.projector} ({conditioning.info['arch']})")
    else:
        conditioning = vault.condition(args.image, box, args.k, args.prompt, args.mode, args.alpha, args.temperature)
        _print_neighbors(conditioning.neighbors)
    out = conditioning.save(args.out)
    print(f"wrote {out}: prompt_embeds {list(conditioning.prompt_embeds.shape)}, pooled_prompt_embeds "
          f"{list(conditioning.pooled_prompt_embeds.shape)} (+ negatives), mode {args.mode}")
    return 0


def _print_index_summary(home) -> None:
    from luna_core.index.store import IndexStore

    for pointer in sorted((home.root / "index").glob("*/current.json")):
        version = IndexStore(pointer.parent).current()
        meta = version.meta()
        plan = meta.get("plan", {})
        print(f"\nIndex {pointer.parent.name} v{version.number}: {meta.get('vectors', 0):,} images, "
              f"{plan.get('factory', '?')}, recall@10 {float(meta.get('recall_at_10', 0)):.3f} on held-out vectors, "
              f"p50 {float(meta.get('p50_ms', 0)):.2f} ms, {(meta.get('index_bytes', 0) + meta.get('lookup_bytes', 0)) / 1e6:.2f} MB")


def cmd_projector_list(args: argparse.Namespace) -> int:
    from luna_core.projector.registry import list_versions, tracking_uri

    home = _home(args)
    versions = list_versions(home.root, args.name)
    if not versions:
        print(f"no versions of {args.name} in {tracking_uri(home.root)}: materialize `projector` (or run luna demo)")
        return 1
    print(f"{args.name} in {tracking_uri(home.root)}")
    _print_table(versions, ["version", "aliases", "arch", "val_loss", "token_cos", "pooled_cos", "promoted", "fingerprint",
                            "subset"])
    return 0


def _demo_projector(home) -> None:
    from luna_core.projector.registry import list_versions

    versions = list_versions(home.root)
    champion = next((v for v in versions if "champion" in v["aliases"]), None)
    if champion is None:
        return
    sample = next(iter(sorted((home.samples_dir / "comfyui").glob("*.png"))))
    answer = _open_vault(home).condition_with_projector(sample, "models:/luna-projector@champion")
    out = answer.save(home.root / "demo_projector.safetensors")
    print(f"\nProjector: luna-projector v{champion['version']} is @champion ({champion['arch']}, val token cosine "
          f"{champion['token_cos']}); answer for {os.path.relpath(sample, home.root)} → {out}")


def _print_catalog_summary(home) -> None:
    from luna_core import catalog

    with catalog.open_catalog(home.catalog_path, read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM images GROUP BY 1").fetchall())
        by_generator = con.execute("""
            SELECT g.generator, count(*) AS images, count(DISTINCT g.prompt) AS prompts
            FROM images i JOIN generations g USING (content_hash) WHERE i.status = 'ok'
            GROUP BY 1 ORDER BY 2 DESC""").fetchall()
        unique = con.execute("SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'").fetchone()[0]
        quarantined = catalog.quarantine_rows(con, 30)
        n_quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    print(f"\nCatalog: {statuses.get('ok', 0)} image files ({unique} unique by content), "
          f"{statuses.get('missing', 0)} missing, {n_quarantined} quarantined")
    _print_table([{"generator": g, "images": n, "prompts": p} for g, n, p in by_generator],
                 ["generator", "images", "prompts"])
    if quarantined:
        print("\nQuarantined (nothing is dropped: each file with its reason):")
        rows = [{**q, "path": os.path.relpath(q["path"], home.root)} for q in quarantined]
        _print_table(rows, ["reason", "path", "detail"], {"path": 44, "detail": 70})


# ---------------------------------------------------------------- ingest / status / ui


def cmd_ingest(args: argparse.Namespace) -> int:
    from luna_core.containers import ProbeLimits
    from luna_core.ingest import IngestOptions, ingest

    home = _home(args)
    missing = [r for r in args.roots if not Path(r).is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    roots = home.add_roots(args.roots) if not args.no_record else [str(Path(r).absolute()) for r in args.roots]
    selected = [str(Path(r).absolute()) for r in args.roots]
    options = IngestOptions(limits=ProbeLimits(max_pixels=args.max_pixels), workers=args.workers)
    report = ingest(home.catalog_path, selected, options)
    print(f"Ingested {', '.join(selected)} into {home.catalog_path} in {report.seconds:.1f}s")
    counts = report.counts()
    print("  " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items() if k != "bytes_read"))
    if report.by_reason:
        print("  quarantine by reason: " + ", ".join(f"{k} {v}" for k, v in report.by_reason.items())
              + "  (see `luna status`)")
    if len(roots) > len(selected):
        print(f"  ({len(roots)} roots recorded in {home.config_path})")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    home = _home(args)
    if not home.roots():
        print(f"error: no library roots recorded in {home.config_path}; run `luna ingest ROOT` first", file=sys.stderr)
        return 2
    if args.profile:
        home.set_model_profile(args.profile)
    print(f"Materializing every Luna asset for {home.root} (profile '{home.model_profile() or 'sdxl'}')…")
    if not _report_run(run_build_all(home)):
        return 1
    _print_catalog_summary(home)
    _print_vault_summary(home)
    _print_index_summary(home)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    home = _home(args)
    if not home.catalog_path.exists():
        print(f"No catalog at {home.catalog_path} yet: run `luna ingest ROOT` or `luna demo`.")
        return 1
    print(f"Luna home {home.root}; roots: {', '.join(home.roots()) or '(none)'}")
    _print_catalog_summary(home)
    _print_vault_summary(home)
    _print_index_summary(home)
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    home = _home(args)
    env = dict(os.environ, LUNA_HOME=str(home.root), DAGSTER_HOME=str(home.dagster_home))
    command = ["dagster", "dev", "-m", "dagster_project.definitions", "-a", "defs", "-p", str(args.port)]
    print(f"Starting the Dagster UI for {home.root} on http://127.0.0.1:{args.port} (Ctrl-C stops it)")
    bin_dir = Path(sys.executable).parent
    executable = bin_dir / "dagster" if (bin_dir / "dagster").exists() else "dagster"
    os.execvpe(str(executable), [str(executable)] + command[1:], env)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="luna", description="Luna: your image library as an SDXL conditioning vault.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    home_help = "Luna home folder (default: $LUNA_HOME, else ./luna_home)"

    demo = sub.add_parser("demo", help="generate a sample library and build every asset through Dagster")
    demo.add_argument("--home", help=home_help)
    demo.add_argument("--images", type=int, default=66, help="sample images to generate (default 66)")
    demo.add_argument("--size", type=int, default=256, help="sample image side in pixels (default 256)")
    demo.add_argument("--seed", type=int, default=0, help="sample library seed (default 0)")
    demo.add_argument("--profile", default="tiny", choices=["tiny", "sdxl"],
                      help="model profile (default tiny: small local encoders, no download)")
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser("ingest", help="catalog the images under one or more folders")
    ingest.add_argument("roots", nargs="+", metavar="ROOT", help="library folder")
    ingest.add_argument("--home", help=home_help)
    ingest.add_argument("--workers", type=int, default=0, help="reader processes (default: one per core)")
    ingest.add_argument("--max-pixels", type=int, default=100_000_000, help="decompression-bomb bound (default 100M)")
    ingest.add_argument("--no-record", action="store_true", help="do not record the roots in the home's luna.toml")
    ingest.set_defaults(func=cmd_ingest)

    build = sub.add_parser("build", help="materialize every asset for the recorded library roots through Dagster")
    build.add_argument("--home", help=home_help)
    build.add_argument("--profile", choices=["tiny", "sdxl"], help="record and use this model profile")
    build.set_defaults(func=cmd_build)

    search = sub.add_parser("search", help="the library images most similar to an image or a crop of it")
    search.add_argument("image")
    search.add_argument("--box", help="crop X,Y,W,H in pixels")
    search.add_argument("--k", type=int, default=5)
    search.add_argument("--json", action="store_true", help="print JSON")
    search.add_argument("--home", help=home_help)
    search.add_argument("--device", default="auto")
    search.set_defaults(func=cmd_search)

    condition = sub.add_parser("condition", help="an SDXL conditioning (safetensors) for an image or a crop of it")
    condition.add_argument("image")
    condition.add_argument("--box", help="crop X,Y,W,H in pixels")
    condition.add_argument("--k", type=int, default=5)
    condition.add_argument("--prompt", help="a typed prompt to mix the vault answer into")
    condition.add_argument("--mode", default="replace", choices=["replace", "blend", "concat"],
                           help="replace: the vault answer alone; blend: (1-alpha)*prompt + alpha*vault; "
                                "concat: prompt tokens then vault tokens (154)")
    condition.add_argument("--alpha", type=float, default=0.5, help="the vault's share in blend mode")
    condition.add_argument("--temperature", type=float, default=0.05, help="softmax temperature of the neighbour weights")
    condition.add_argument("--projector", help="answer with a registered projector instead of the vault, "
                                                "e.g. models:/luna-projector@champion")
    condition.add_argument("--out", required=True, help="output .safetensors file")
    condition.add_argument("--home", help=home_help)
    condition.add_argument("--device", default="auto")
    condition.set_defaults(func=cmd_condition)

    proj = sub.add_parser("projector", help="registered projectors (MLflow)")
    proj_sub = proj.add_subparsers(dest="projector_command", required=True)
    plist = proj_sub.add_parser("list", help="versions, aliases and key metrics")
    plist.add_argument("--name", default="luna-projector")
    plist.add_argument("--home", help=home_help)
    plist.set_defaults(func=cmd_projector_list)

    status = sub.add_parser("status", help="what the catalog holds, and what is quarantined and why")
    status.add_argument("--home", help=home_help)
    status.set_defaults(func=cmd_status)

    ui = sub.add_parser("ui", help="open the Dagster UI on a Luna home")
    ui.add_argument("--home", help=home_help)
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from luna_core.errors import LunaConfigError

    try:
        return args.func(args)
    except LunaConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; committed work is kept and a rerun continues from it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
