"""Asking a running `luna serve`: one POST of a picture's bytes, with the service's token from the
settings (`serve.token`, never a command-line or node value: graphs and shell histories are
shared), and the service's own error sentence as a Luna error."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request

from luna_core.errors import LunaConfigError, NotBuiltError
from luna_core.home.settings import LOCAL_HOST, environment_settings


def check_server(server: str, given_as: str = "server") -> None:
    """A service address is an http(s) URL; `given_as` names where it came from in the error."""
    parsed = urllib.parse.urlsplit(server)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise LunaConfigError(
            f"{given_as} {server!r} is not a URL: give the service's address, e.g. "
            f"http://{LOCAL_HOST}:7861 (what `luna serve` prints)"
        )


def post(
    server: str, path: str, params: list[tuple[str, str | None]], body: bytes, given_as="server"
) -> bytes:
    """The service's answer at `server` + `path` (params of None left out); a refusal becomes the
    same one-line error (409, nothing built yet: NotBuiltError), an unreachable service says how to
    start it."""
    check_server(server, given_as)
    query = urllib.parse.urlencode([(k, v) for k, v in params if v is not None])
    headers = {"Content-Type": "application/octet-stream"}
    token = environment_settings().text("serve.token")
    if token:  # the service's token, when it asks for one
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"{server.rstrip('/')}{path}?{query}", data=body, method="POST", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise (NotBuiltError if exc.code == 409 else LunaConfigError)(
            f"{server}: {message}"
        ) from None
    except urllib.error.URLError as exc:
        raise LunaConfigError(
            f"cannot reach the Luna service at {server} ({exc.reason}); start it with `luna serve`"
        ) from None
    except (
        OSError,
        ValueError,
        http.client.HTTPException,
    ) as exc:  # a dropped connection, a bad port
        raise LunaConfigError(
            f"the Luna service at {server} did not answer ({exc}); is `luna serve` running there?"
        ) from None
