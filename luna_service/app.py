"""`luna serve`: the vault and the champion projector behind a local HTTP API, loaded once.

The encoders, the current index and the projector stay in memory; each request only embeds its crops
and looks up the answer. Between requests the service notices a new index version (`current.json`
moved) or a moved projector alias and swaps in the new one whole: a request always sees one
consistent index (and its lookup), never half of a swap. Requests are served one at a time (the
models are not shared across threads), each under the same lock as the swap.

    POST /search?k=5&box=X,Y,W,H          body: image bytes     → JSON neighbours
    POST /condition?source=vault|projector&k=&temperature=&prompt=&mode=&alpha=&box=...&format=
                                          body: image bytes     → safetensors (or JSON with format=json)
    GET  /health                                                → versions of index and projector
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from luna_core.boxes import Box
from luna_core.containers import ProbeLimits
from luna_core.errors import BadFileError, CorruptStoreError, LunaError, NotBuiltError
from luna_core.images import decode_picture
from luna_core.index.store import index_store
from luna_core.models.profiles import ModelProfile
from luna_core.projector.registry import Registry, parse_model_uri
from luna_core.query import DEFAULT_TEMPERATURE, QueryError, Vault, crop
from luna_core.refine.settings import DEFAULT_PROJECTOR
from luna_core.settings import LunaHome

log = logging.getLogger("luna.serve")

MAX_BODY_BYTES = 64 * 1024 * 1024
MAX_BOXES = 64
ALIAS_CHECK_SECONDS = 2.0  # how often the registry is asked whether the projector alias moved


@dataclass
class ServiceState:
    """What one request is answered from: swapped whole, never edited in place."""

    vault: Vault
    index_version: int | None
    projector: tuple | None = None  # (model, config)
    projector_version: str | None = None
    loaded_at: float = field(default_factory=time.time)


class ConditionQuery(BaseModel):
    """What `POST /condition` asks, as query parameters (the image is the body); mixing: luna_core.mixing."""

    source: str = "vault"
    k: int = 5
    temperature: float = DEFAULT_TEMPERATURE
    prompt: str | None = None
    negative_prompt: str | None = None
    mode: str = "replace"
    alpha: float = 0.5
    box: list[str] = []
    format: str = "safetensors"


class LunaService:
    def __init__(self, home: LunaHome, profile: ModelProfile, device: str = "auto",
                 projector_uri: str = DEFAULT_PROJECTOR, tracking_uri: str | None = None,
                 limits: ProbeLimits = ProbeLimits()):
        self.home, self.profile, self.device = home, profile, device
        self.projector_uri, self.tracking_uri, self.limits = projector_uri, tracking_uri, limits
        self.registry = Registry(home, tracking_uri)
        self.lock = threading.Lock()
        self._alias_checked = 0.0
        self.state = ServiceState(Vault(home, profile, device=device), None)
        self.refresh(force=True)

    # ------------------------------------------------------------ swapping

    def _current_index_version(self) -> int | None:
        try:
            current = index_store(self.home, self.profile).current()
        except CorruptStoreError:
            return self.state.index_version
        return None if current is None else current.number

    def _projector_version(self) -> str | None:
        name, ref = parse_model_uri(self.projector_uri)
        try:
            return str(self.registry.resolve(name, ref))
        except LunaError:
            return None

    def refresh(self, force: bool = False) -> None:
        """Swap in a new index version or projector version when either moved (call under the lock)."""
        state = self.state
        version = self._current_index_version()
        projector_version = state.projector_version
        if force or time.monotonic() - self._alias_checked >= ALIAS_CHECK_SECONDS:
            self._alias_checked = time.monotonic()
            projector_version = self._projector_version()
        if not force and version == state.index_version and projector_version == state.projector_version:
            return
        vault = Vault(self.home, self.profile, device=self.device)
        vault.adopt_encoders(state.vault)
        if version is not None:
            try:
                vault.index  # noqa: B018 - loaded now, so a request never meets a half-loaded index
            except LunaError as exc:
                log.warning("index v%s could not be loaded (%s); still answering from v%s", version, exc,
                            state.index_version)
                return
        projector = state.projector
        if projector_version is not None and (force or projector_version != state.projector_version):
            try:
                projector = vault.load_projector(self.projector_uri, self.tracking_uri)
            except LunaError as exc:
                log.warning("projector %s could not be loaded: %s", self.projector_uri, exc)
                projector, projector_version = None, None
        self.state = ServiceState(vault, version, projector, projector_version)
        log.info("serving index v%s, projector %s v%s", version, self.projector_uri, projector_version)

    # ------------------------------------------------------------ requests

    def health(self) -> dict:
        with self.lock:
            self.refresh()
            state = self.state
        return {"status": "ok", "home": str(self.home.root), "profile": self.profile.name,
                "vision_key": self.profile.vision_key, "text_key": self.profile.text_key,
                "index_version": state.index_version,
                "projector": {"uri": self.projector_uri, "version": state.projector_version}
                if state.projector_version else None}

    def _crops(self, body: bytes, boxes: list[str]) -> list:
        if not body:
            raise QueryError("the request has no image: send the image file's bytes as the request body")
        if len(boxes) > MAX_BOXES:
            raise QueryError(f"{len(boxes)} boxes; at most {MAX_BOXES} a request")
        image = decode_picture(body, "the uploaded file", self.limits).convert("RGB")
        return [crop(image, Box.parse(b), "uploaded") for b in boxes] or [image]

    def search(self, body: bytes, k: int = 5, boxes: list[str] = ()) -> list[dict]:
        with self.lock:
            self.refresh()
            state = self.state
            crops = self._crops(body, list(boxes))
            embeddings = state.vault.embed_pictures(crops)
            results = [[n.__dict__ for n in state.vault.nearest(e, k)] for e in embeddings]
        return results[0] if len(results) == 1 else results

    def condition(self, body: bytes, ask: ConditionQuery | None = None):
        ask = ask or ConditionQuery()
        with self.lock:
            self.refresh()
            state = self.state
            crops = self._crops(body, list(ask.box))
            if ask.source == "projector" and state.projector is None:
                raise NotBuiltError(f"no projector at {self.projector_uri}: register one (luna build) or start the "
                                    "service with another --projector")
            conditioning = state.vault.condition_crops(crops, ask.source, ask.k, ask.temperature, ask.prompt, ask.mode,
                                                       ask.alpha, projector=state.projector,
                                                       negative_prompt=ask.negative_prompt)
            conditioning.info["projector_version"] = state.projector_version if ask.source == "projector" else None
        return conditioning


def create_app(service: LunaService):
    """The FastAPI application: every Luna error becomes one JSON error with a 4xx status, never a trace."""
    app = FastAPI(title="Luna", description="The vault and the projector, loaded once.", version="1")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', [])[1:])}: {e.get('msg')}" for e in exc.errors())
        return error(400, problems or "invalid request")

    @app.exception_handler(NotBuiltError)
    async def not_built(request: Request, exc: NotBuiltError):
        return error(409, str(exc))

    @app.exception_handler(LunaError)
    async def bad_input(request: Request, exc: LunaError):
        return error(400, str(exc))

    @app.exception_handler(BadFileError)
    async def bad_file(request: Request, exc: BadFileError):
        return error(400, f"the uploaded image: {exc.detail}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("request %s failed", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the service log has the details")

    async def body_of(request: Request) -> bytes:
        declared = int(request.headers.get("content-length") or 0)
        if declared > MAX_BODY_BYTES:
            raise QueryError(f"the request body is {declared:,} bytes, over the {MAX_BODY_BYTES:,} byte bound")
        body = b""
        async for part in request.stream():
            body += part
            if len(body) > MAX_BODY_BYTES:
                raise QueryError(f"the request body is over the {MAX_BODY_BYTES:,} byte bound")
        return body

    @app.get("/health")
    def health():
        return service.health()

    @app.post("/search")
    async def search(request: Request, k: int = 5, box: list[str] = Query(default=[])):
        body = await body_of(request)
        return service.search(body, k, box)

    @app.post("/condition")
    async def condition(request: Request, ask: Annotated[ConditionQuery, Query()]):
        if ask.format not in ("safetensors", "json"):
            raise QueryError(f"format {ask.format!r} is not one of safetensors, json")
        body = await body_of(request)
        conditioning = service.condition(body, ask)
        if ask.format == "json":
            return {**conditioning.info, "shapes": {name: list(getattr(conditioning, name).shape) for name in (
                "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds", "negative_pooled_prompt_embeds")},
                "neighbors": [n.__dict__ for n in conditioning.neighbors]}
        return Response(conditioning.to_bytes(), media_type="application/octet-stream",
                        headers={"X-Luna-Items": str(len(conditioning.prompt_embeds))})

    return app
