"""`luna serve`: the search page and the HTTP API over the vault and the champion projector.

    GET  /                                      the search page (no asset from outside the machine)
    POST /search?k=&box=X,Y,W,H&…filters        body: image bytes (raw or multipart), or ?path= /
    ?hash=
                                                → {"index_version", "k", "results": [{"box",
                                                "neighbors",
                                                   "mixed_prompt"}]}: one shape for any number of
                                                   boxes
    POST /condition?source=vault|projector&k=&temperature=&prompt=&mode=&alpha=&box=…&format=
                                                → safetensors (or JSON with format=json)
    GET  /library/search?q=&page=&per_page=&…filters   text search over the catalog's prompts,
                                                paged
    GET  /library/facets                        generators, models, LoRAs (for the filters)
    GET  /library/thumbnail?hash=|path=         a cached JPEG thumbnail of a library image
    GET  /library/file?hash=|path=              the library image itself
    GET  /health                                versions of index and projector

With a token (`serve.token`), every request but the page, its static files and /health carries
`Authorization: Bearer TOKEN` (or the page's cookie); without it, 401. Every route reads: the
service never writes to the library, the catalog or the vault.

Filters (search, condition, library search): model, lora, generator, after, before (YYYY-MM-DD),
text. Blocking work (models, index, catalog) runs on a pool of worker threads, never on the event
loop, so /health answers while searches run. Bodies are read as a stream with a cap (413 past
it); a non-image is 415, a bad box or k 422, a path outside the library roots 403. Every response
carries a CSP.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import hmac
import logging
import mimetypes
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel

from luna_core.ask.ask_options import AskOptions
from luna_core.ask.browse import CatalogFilter, facets
from luna_core.ask.mixing import PromptMix
from luna_core.ask.thumbnails import thumbnail
from luna_core.errors import (
    BadFileError,
    LunaConfigError,
    LunaError,
    NotBuiltError,
    OutsideLibraryError,
    QueryError,
)
from luna_core.images import PictureError
from luna_service.service import LunaService
from luna_service.service import Query as Ask

log = logging.getLogger("luna.serve")

MAX_BODY_BYTES = 64 * 1024 * 1024
STATIC = {"app.js": "text/javascript", "app.css": "text/css", "logo.svg": "image/svg+xml"}
# Everything the page needs comes from this service; images may be blobs (a dropped file) or data
# URLs.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src "
    "'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class BodyTooLarge(LunaError):
    """A request body over the service's bound."""


class Filters(BaseModel):
    model: str = ""
    lora: str = ""
    generator: str = ""
    after: str = ""
    before: str = ""
    text: str = ""

    def where(self) -> CatalogFilter:
        return CatalogFilter(
            self.model, self.lora, self.generator, self.after, self.before, self.text
        )


class SearchQuery(Filters):
    k: int = AskOptions.k
    box: list[str] = []
    temperature: float | None = None
    path: str | None = None
    hash: str | None = None


class ConditionQuery(SearchQuery):
    """What `POST /condition` asks, as query parameters (the image is the body); mixing:
    luna_core.ask.mixing."""

    source: str = "vault"
    prompt: str | None = None
    negative_prompt: str | None = None
    mode: str = AskOptions.mode
    alpha: float = AskOptions.alpha
    format: str = "safetensors"


def _ask(query: SearchQuery, **more) -> Ask:
    extra = {} if query.temperature is None else {"temperature": query.temperature}
    return Ask(k=query.k, boxes=tuple(query.box), where=query.where(), **extra, **more)


def _status(exc: Exception) -> int:
    if isinstance(exc, (BodyTooLarge,)):
        return 413
    if isinstance(exc, PictureError):
        return {"not_an_image": 415, "too_large": 413}.get(exc.reason, 422)
    if isinstance(exc, BadFileError):
        return 415 if exc.reason in ("not_an_image", "empty_file") else 422
    if isinstance(exc, OutsideLibraryError):
        return 403
    if isinstance(exc, QueryError):
        return 422
    if isinstance(exc, NotBuiltError):
        return 409
    return 400


async def read_body(request: Request) -> bytes:
    """The request's image bytes, read as a stream and refused past the cap; a multipart form's
    first file part (curl -F image=@file.png) is the image."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyTooLarge(
            f"the request body is {int(declared):,} bytes, over the {MAX_BODY_BYTES:,} byte bound"
        )
    chunks, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(f"the request body is over the {MAX_BODY_BYTES:,} byte bound")
        chunks.append(part)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data") and body:
        return _multipart_file(content_type, body)
    return body


def _multipart_file(content_type: str, body: bytes) -> bytes:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise QueryError(
            "the multipart body could not be read: send the image as a form file or as raw bytes"
        )
    for part in message.iter_parts():
        if part.get_filename() is not None or part.get_param(
            "name", header="content-disposition"
        ) in ("image", "file"):
            return part.get_payload(decode=True) or b""
    raise QueryError("the multipart form has no file part: send it as -F image=@picture.png")


OPEN_PATHS = ("/", "/health", "/favicon.ico")  # the page itself holds no library data
TOKEN_COOKIE = "luna_token"  # what the page keeps once asked, so its <img> requests carry it


def authorized(request: Request, token: str) -> bool:
    """The request carries the service's token: a bearer header (API clients, the ComfyUI nodes)
    or the page's cookie."""
    header = request.headers.get("authorization", "")
    given = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
    given = given or urllib.parse.unquote(request.cookies.get(TOKEN_COOKIE, ""))
    return hmac.compare_digest(given.encode(), token.encode())


def create_app(service: LunaService, workers: int = 4, token: str = ""):
    """The FastAPI application: every Luna error becomes one JSON error with a 4xx status, never
    a trace. With a `token`, every request but the page, its static files and /health must carry
    it (401 otherwise)."""
    app = FastAPI(
        title="Luna", description="Search your library; take a conditioning.", version="2"
    )
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="luna-serve")
    # never behind searches
    refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="luna-refresh")
    static = resources.files("luna_service") / "static"

    async def off_loop(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)

    @app.middleware("http")
    async def secure(request: Request, call_next):
        path = request.url.path
        if token and path not in OPEN_PATHS and not path.startswith("/static/"):
            if not authorized(request, token):
                response = error(
                    401,
                    "this Luna server asks for its token (serve.token): send "
                    "'Authorization: Bearer TOKEN'",
                )
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}"
            for e in exc.errors()
        )
        return error(422, problems or "invalid request")

    @app.exception_handler(LunaError)
    async def luna_error(request: Request, exc: LunaError):
        return error(
            _status(exc),
            f"the uploaded image: {exc.detail}" if isinstance(exc, BadFileError) else str(exc),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the service log has the details")

    # ------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page():
        return Response(
            (static / "index.html").read_bytes(),
            media_type="text/html; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in STATIC:  # a fixed list: no path from the request reaches the file system
            return error(404, f"no static file {name!r}")
        return Response(
            (static / name).read_bytes(),
            media_type=STATIC[name],
            headers={"Cache-Control": "no-cache"},
        )

    # ------------------------------------------------------------ the API

    @app.get("/health")
    async def health():
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(refresher, service.refresh)  # a stat when nothing moved
        return service.health()

    @app.post("/search")
    async def search(request: Request, query: Annotated[SearchQuery, Query()]):
        body = await read_body(request)

        def work():
            return service.search(service.picture(body, query.path, query.hash), _ask(query))

        return await off_loop(work)

    @app.post("/condition")
    async def condition(request: Request, query: Annotated[ConditionQuery, Query()]):
        if query.format not in ("safetensors", "json"):
            raise QueryError(f"format {query.format!r} is not one of safetensors, json")
        if query.source not in ("vault", "projector"):
            raise QueryError(f"source {query.source!r} is not one of vault, projector")
        body = await read_body(request)
        ask = _ask(
            query,
            source=query.source,
            with_prompt=PromptMix(query.prompt, query.negative_prompt, query.mode, query.alpha),
        )

        def work():
            return service.condition(service.picture(body, query.path, query.hash), ask)

        conditioning = await off_loop(work)
        if query.format == "json":
            return {
                **conditioning.info,
                "shapes": {
                    name: list(getattr(conditioning, name).shape)
                    for name in (
                        "prompt_embeds",
                        "pooled_prompt_embeds",
                        "negative_prompt_embeds",
                        "negative_pooled_prompt_embeds",
                    )
                },
                "neighbors": [n.__dict__ for n in conditioning.neighbors],
            }
        payload = await off_loop(conditioning.to_bytes)
        return Response(
            payload,
            media_type="application/octet-stream",
            headers={
                "X-Luna-Items": str(len(conditioning.prompt_embeds)),
                "Content-Disposition": 'attachment; filename="luna-conditioning.safetensors"',
            },
        )

    @app.get("/library/search")
    async def library_search(
        query: Annotated[Filters, Query()], q: str = "", page: int = 1, per_page: int = 40
    ):
        return await off_loop(service.library_search, q, query.where(), page, per_page)

    @app.get("/library/facets")
    async def library_facets():
        return await off_loop(facets, service.home.catalog_path)

    @app.get("/library/thumbnail")
    async def library_thumbnail(path: str | None = None, hash: str | None = None):
        def work():
            return thumbnail(
                service.home.thumbnails_dir, service.library_path(path, hash), service.limits
            )

        return FileResponse(
            await off_loop(work),
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=300"},
        )

    @app.get("/library/file")
    async def library_file(path: str | None = None, hash: str | None = None):
        real = await off_loop(service.library_path, path, hash)
        media = mimetypes.guess_type(real.name)[0] or "application/octet-stream"
        if not media.startswith("image/"):
            raise LunaConfigError(f"{real.name} is not an image file")
        return FileResponse(
            real, media_type=media, headers={"Cache-Control": "private, max-age=300"}
        )

    app.state.pool = pool
    return app
