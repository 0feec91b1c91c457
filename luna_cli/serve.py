"""`luna serve`, and the client side of `luna search/condition --server URL`."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from luna_core.errors import LunaConfigError, NotBuiltError
from luna_core.models.profiles import resolve_profile
from luna_core.settings import LunaHome


def cmd_serve(args: argparse.Namespace) -> int:
    # the server's stack (FastAPI, torch) loads only for `luna serve`
    import uvicorn

    # the server's stack (FastAPI, torch) loads only for `luna serve`
    from luna_service.app import LunaService, create_app

    home = LunaHome.existing(args.home)
    profile = resolve_profile(home.model_profile(), home.models_dir)
    service = LunaService(home, profile, device=args.device, projector_uri=args.projector,
                          tracking_uri=args.tracking_uri)
    state = service.state
    print(f"Luna serves {home.root} (profile {profile.name}, index v{state.index_version}, projector "
          f"{args.projector} v{state.projector_version}) on http://{args.host}:{args.port}; Ctrl-C stops it",
          flush=True)
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def ask(server: str, path: str, image: str, params: list[tuple[str, str]]) -> bytes:
    """POST the image file to `server` + `path`; a service error becomes the same one-line error."""
    try:
        body = Path(image).read_bytes()
    except OSError as exc:
        raise LunaConfigError(f"cannot read image {image}: {exc.strerror or exc}") from None
    url = server.rstrip("/") + path + "?" + urllib.parse.urlencode([(k, v) for k, v in params if v is not None])
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise (NotBuiltError if exc.code == 409 else LunaConfigError)(f"{server}: {message}") from None
    except urllib.error.URLError as exc:
        raise LunaConfigError(f"cannot reach the Luna service at {server} ({exc.reason}); start it with `luna serve`") from None
