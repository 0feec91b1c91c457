"""`luna serve`, and the client side of `luna search/condition --server URL`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.home.settings import LOCAL_HOST
from luna_service.client import check_server, post


def serve_workers(home: LunaHome) -> int:
    """Worker threads for searches (`serve.workers`; 0: one per core, at most 8)."""
    workers = home.settings().integer("serve.workers", 0, 64)
    return workers or min(8, os.cpu_count() or 1)


def cmd_serve(args: argparse.Namespace) -> int:
    # the server's stack (FastAPI, torch) loads only for `luna serve`
    import uvicorn

    # the server's stack (FastAPI, torch) loads only for `luna serve`
    from luna_service.app import create_app
    from luna_service.service import LunaService

    home = LunaHome.existing(args.home)
    profile = home.profile()
    workers = serve_workers(home)
    token = home.settings().text("serve.token")
    if args.host not in (LOCAL_HOST, "localhost", "::1") and not token:
        raise LunaConfigError(
            f"listening on {args.host} lets other machines search the library and open its "
            "images: set a token first (serve.token: [serve] token in luna.toml, or "
            "$LUNA_SERVE_TOKEN); clients send it as 'Authorization: Bearer TOKEN'"
        )
    # the server's stack (FastAPI, torch) loads only for `luna serve`
    import torch

    # Requests run side by side on the workers: each model call gets its share of the cores, not all
    # of them (8 workers each asking torch for every core spent more time switching than computing).
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    service = LunaService(
        home,
        profile,
        device=args.device,
        projector_uri=args.projector,
        tracking_uri=args.tracking_uri,
    )
    state = service.state
    print(
        f"Luna serves {home.root} (profile {profile.name}, index v{state.index_version}, projector "
        f"{args.projector} v{state.projector_version}, {workers} workers): open "
        f"http://{args.host}:{args.port}/ "
        "to search"
        + ("; every request but /health needs the token (serve.token)" if token else "")
        + "; Ctrl-C stops it",
        flush=True,
    )
    uvicorn.run(
        create_app(service, workers, token),
        host=args.host,
        port=args.port,
        log_level="info",
        access_log=False,
    )
    return 0


def ask(server: str, path: str, image: str, params: list[tuple[str, str]]) -> bytes:
    """POST the image file to `server` + `path`; a service error becomes the same one-line error."""
    check_server(server, "--server")
    try:
        body = Path(image).read_bytes()
    except IsADirectoryError:
        raise LunaConfigError(f"image {image} is a folder: give an image file") from None
    except OSError as exc:
        raise LunaConfigError(f"cannot read image {image}: {exc.strerror or exc}") from None
    return post(server, path, params, body, "--server")
