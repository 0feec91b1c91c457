"""`luna projector list`: registered projector versions, their aliases and validation scores."""

from __future__ import annotations

import argparse

from luna_cli.output import print_table
from luna_core.home.home import LunaHome


def cmd_projector_list(args: argparse.Namespace) -> int:
    # mlflow is heavy: only this command pays for it
    from luna_core.projector.registry import (
        Registry,
    )

    home = LunaHome.existing(args.home)
    registry = Registry(home, args.tracking_uri)
    uri = registry.uri
    versions = [v.row() for v in registry.versions(args.name)]
    if not versions:
        print(f"no versions of {args.name} in {uri}: materialize `projector` (or run luna demo)")
        return 1
    print(f"{args.name} in {uri}")
    print_table(
        versions,
        [
            "version",
            "aliases",
            "arch",
            "values",
            "val_loss",
            "token_cos",
            "pooled_cos",
            "promoted",
            "fingerprint",
            "subset",
        ],
    )
    return 0
