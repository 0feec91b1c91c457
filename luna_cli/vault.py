"""`luna search` and `luna condition`: ask the vault (or a registered projector) about an image
or a crop."""

from __future__ import annotations

import argparse
import json

from luna_cli.declared import read_declared
from luna_cli.output import print_neighbors
from luna_cli.serve import ask
from luna_core.ask.ask_options import AskOptions
from luna_core.ask.boxes import Box
from luna_core.errors import QueryError
from luna_core.files import write_atomically
from luna_core.home.home import LunaHome
from luna_core.projector.names import DEFAULT_PROJECTOR

# What `luna search` leaves out of the ask options, and why; `luna condition` takes them all.
SEARCH_OMITTED = {
    "temperature": "a search ranks neighbours by similarity; weights belong to a conditioning",
    "prompt": "a search returns neighbours: nothing is mixed",
    "negative_prompt": "a search returns neighbours: nothing is mixed",
    "mode": "a search returns neighbours: nothing is mixed",
    "alpha": "a search returns neighbours: nothing is mixed",
}
CONDITION_OMITTED: dict[str, str] = {}


def open_vault(home: LunaHome, profile: str | None = None, device: str = "auto"):
    # pulls torch in (about a second to import): only the commands that need it pay for it
    from luna_core.session import LunaSession

    return LunaSession.open(home, profile=profile, device=device).vault()


def cmd_search(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.text is None):
        raise QueryError("give an image or --text, not both or neither")
    read_declared(AskOptions, args, SEARCH_OMITTED).check()
    if args.text is not None:
        if args.server or args.box:
            raise QueryError("--text searches this home's vault: --server and --box do not apply")
        neighbors = open_vault(LunaHome.existing(args.home), device=args.device).search_text(
            args.text, args.k
        )
    elif args.server:
        # pulls torch in (about a second to import): only the commands that need it pay for it
        from luna_core.ask.answers import Neighbor

        answer = json.loads(
            ask(args.server, "/search", args.image, [("k", str(args.k)), ("box", args.box)])
        )
        fields = Neighbor.__dataclass_fields__
        neighbors = [
            Neighbor(**{k: v for k, v in n.items() if k in fields})
            for n in answer["results"][0]["neighbors"]
        ]
    else:
        home = LunaHome.existing(args.home)
        box = Box.parse(args.box) if args.box else None
        neighbors = open_vault(home, device=args.device).search(args.image, box, args.k)
    if args.json:
        print(json.dumps([n.__dict__ for n in neighbors], indent=2, default=str))
    else:
        print_neighbors(neighbors)
    return 0


def cmd_condition(args: argparse.Namespace) -> int:
    if args.server:
        return _condition_by_server(args)
    home = LunaHome.existing(args.home)
    box = Box.parse(args.box) if args.box else None
    # Every setting is checked before a model loads, whichever source answers.
    read_declared(AskOptions, args, CONDITION_OMITTED).check(neighbours=not args.projector)
    vault = open_vault(home, device=args.device)
    if args.projector:
        conditioning = vault.condition_with_projector(
            args.image,
            args.projector,
            box,
            args.prompt,
            args.mode,
            args.alpha,
            tracking_uri=args.tracking_uri,
            negative_prompt=args.negative_prompt,
        )
        print(f"projector {args.projector} ({conditioning.info['arch']})")
    else:
        conditioning = vault.condition(
            args.image,
            box,
            args.k,
            args.prompt,
            args.mode,
            args.alpha,
            args.temperature,
            negative_prompt=args.negative_prompt,
        )
        print_neighbors(conditioning.neighbors)
    out = conditioning.save(args.out)
    print(
        f"wrote {out}: prompt_embeds {list(conditioning.prompt_embeds.shape)}, "
        "pooled_prompt_embeds "
        f"{list(conditioning.pooled_prompt_embeds.shape)} (+ negatives), mode {args.mode}"
    )
    return 0


def _condition_by_server(args: argparse.Namespace) -> int:
    if args.projector and args.projector != DEFAULT_PROJECTOR:
        print(
            "note: the service answers with the projector it was started with, not "
            f"{args.projector}"
        )
    params = [
        ("source", "projector" if args.projector else "vault"),
        ("k", str(args.k)),
        ("box", args.box),
        ("temperature", str(args.temperature)),
        ("prompt", args.prompt),
        ("mode", args.mode),
        ("alpha", str(args.alpha)),
        ("negative_prompt", args.negative_prompt),
    ]
    data = ask(args.server, "/condition", args.image, params)
    out = write_atomically(args.out, lambda tmp: tmp.write_bytes(data))
    print(f"wrote {out} ({len(data):,} bytes) from {args.server}")
    return 0
