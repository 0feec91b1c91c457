"""`luna tiny-world`: the tiny profile's trained models on this machine: where, from which recipe,
how long they took; trains them when missing, or anew with --rebuild."""

from __future__ import annotations

import argparse
import json


def add_parser(sub) -> None:
    cmd = sub.add_parser(
        "tiny-world",
        help="the tiny profile's trained models: where this machine caches them "
        "(training them when missing; --rebuild trains them anew)",
    )
    cmd.add_argument(
        "--rebuild", action="store_true", help="train anew, replacing this recipe's cached models"
    )
    cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    cmd.set_defaults(func=cmd_tiny_world)


def cmd_tiny_world(args: argparse.Namespace) -> int:
    # training pulls torch and the model libraries in: only this command pays for importing them
    from luna_core.models.tiny import ensure_tiny_models
    from luna_core.models.tiny_world import tiny_world_root

    root = tiny_world_root()
    cached = (root / "complete.json").exists() and not args.rebuild
    if not cached:
        print(
            "Training the tiny world (sample-generator pictures only; a few minutes on 2 cores) "
            f"into {root}"
        )
    root = ensure_tiny_models(progress=not args.quiet, rebuild=args.rebuild)
    built = json.loads((root / "complete.json").read_text())
    seconds = built.get("seconds", {})
    print(
        f"Tiny world {built['version']} (recipe {built['recipe_hash']}) at {root}"
        f"{' (cached)' if cached else ''}: trained in {sum(seconds.values()):.0f} s "
        f"({', '.join(f'{part} {s:.0f} s' for part, s in seconds.items())}; torch "
        f"{built.get('torch')}, "
        f"{built.get('threads')} threads)"
    )
    return 0
