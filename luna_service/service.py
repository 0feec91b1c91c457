"""The state `luna serve` answers from, and the work each request does (off the event loop).

The encoders, the current index and the projector stay in memory. A request takes a snapshot of the
state (one attribute read) and works on it with no lock held: any number of searches run side by
side, as FAISS searches and the row reader allow. A new index version (`current.json` moved) or a
moved projector alias is loaded beside the old state and swapped in whole: a request sees one
consistent index and lookup, never half of a swap. Whether anything moved is asked cheaply: a
stat of the local pointer, and at most every ALIAS_CHECK_SECONDS the registry (and a pointer on
object storage).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from luna_core.ask import browse
from luna_core.ask.answers import crop
from luna_core.ask.ask_options import AskOptions
from luna_core.ask.boxes import Box
from luna_core.ask.mixing import MAX_K, PromptMix
from luna_core.ask.vault_query import DEFAULT_TEMPERATURE, QueryError, VaultQuery
from luna_core.containers.probe import ProbeLimits
from luna_core.errors import CorruptStoreError, LunaError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.home.storage import is_remote
from luna_core.images import decode_picture, read_picture
from luna_core.index.store import index_store
from luna_core.models.profiles import ModelProfile
from luna_core.projector.registry import Registry, parse_model_uri
from luna_core.refine.options import DEFAULT_PROJECTOR

log = logging.getLogger("luna.serve")

MAX_BOXES = 64
# how often the registry (and an index pointer on object storage) is asked
ALIAS_CHECK_SECONDS = 2.0


@dataclass
class ServiceState:
    """What one request is answered from: swapped whole, never edited in place."""

    vault: VaultQuery
    index_version: int | None
    projector: tuple | None = None  # (model, config)
    projector_version: str | None = None
    loaded_at: float = field(default_factory=time.time)


@dataclass
class Query:
    """What a search or a conditioning asks besides the picture (see luna_core.ask.mixing for the
    mix)."""

    k: int = AskOptions.k
    boxes: tuple[str, ...] = ()
    source: str = "vault"
    temperature: float = DEFAULT_TEMPERATURE
    with_prompt: PromptMix = PromptMix()
    where: browse.CatalogFilter = browse.CatalogFilter()

    def check(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise QueryError(
                f"k must be at least 1 and at most {MAX_K}"
                if self.k < 1
                else f"k={self.k} is over the service's bound of {MAX_K}"
            )
        if len(self.boxes) > MAX_BOXES:
            raise QueryError(f"{len(self.boxes)} boxes; at most {MAX_BOXES} a request")
        for box in self.boxes:
            Box.parse(box)


class LunaService:
    def __init__(
        self,
        home: LunaHome,
        profile: ModelProfile,
        device: str = "auto",
        projector_uri: str = DEFAULT_PROJECTOR,
        tracking_uri: str | None = None,
        limits: ProbeLimits = ProbeLimits(),
    ):
        self.home, self.profile, self.device = home, profile, device
        self.projector_uri, self.tracking_uri, self.limits = projector_uri, tracking_uri, limits
        self.registry = Registry(home, tracking_uri)
        self._refreshing = threading.Lock()  # one refresh at a time; requests never wait on it
        self._alias_checked = 0.0
        self._pointer_seen: tuple | None = None
        self.state = ServiceState(VaultQuery(home, profile, device=device), None)
        self.refresh(force=True)

    # ------------------------------------------------------------ swapping

    def _pointer_key(self) -> tuple | None:
        """What identifies the index pointer's current content without reading it (None: ask it)."""
        store = index_store(self.home, self.profile)
        if is_remote(store.root):
            return None
        try:
            stat = os.stat(store.pointer)
        except FileNotFoundError:
            return ()
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

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

    def refresh(self, force: bool = False, wait: bool = True) -> None:
        """Swap in a new index version or projector version when either moved. With `wait` False (a
        request), a refresh already running elsewhere is not waited for: the request uses the
        state it has."""
        if not self._refreshing.acquire(blocking=wait):
            return
        try:
            self._refresh(force)
        finally:
            self._refreshing.release()

    def _refresh(self, force: bool) -> None:
        state = self.state
        due = force or time.monotonic() - self._alias_checked >= ALIAS_CHECK_SECONDS
        pointer = self._pointer_key()
        if not due and pointer is not None and pointer == self._pointer_seen:
            return
        version = (
            self._current_index_version()
            if (due or pointer != self._pointer_seen)
            else state.index_version
        )
        self._pointer_seen = pointer
        projector_version = state.projector_version
        if due:
            self._alias_checked = time.monotonic()
            projector_version = self._projector_version()
        if (
            not force
            and version == state.index_version
            and projector_version == state.projector_version
        ):
            return
        vault = VaultQuery(self.home, self.profile, device=self.device)
        vault.adopt_encoders(state.vault)
        if version is not None:
            try:
                vault.index  # noqa: B018 - loaded now, so a request never meets a half-loaded index
                vault.text_store  # noqa: B018 - opened now, not by two requests at once
            except LunaError as exc:
                log.warning(
                    "index v%s could not be loaded (%s); still answering from v%s",
                    version,
                    exc,
                    state.index_version,
                )
                return
        projector = state.projector
        if projector_version is not None and (
            force or projector_version != state.projector_version
        ):
            try:
                projector = vault.load_projector(self.projector_uri, self.tracking_uri)
            except LunaError as exc:
                log.warning("projector %s could not be loaded: %s", self.projector_uri, exc)
                projector, projector_version = None, None
        self.state = ServiceState(vault, version, projector, projector_version)
        log.info(
            "serving index v%s, projector %s v%s", version, self.projector_uri, projector_version
        )

    # ------------------------------------------------------------ requests

    def health(self) -> dict:
        state = self.state
        return {
            "status": "ok",
            "home": str(self.home.root),
            "profile": self.profile.name,
            "vision_key": self.profile.vision_key,
            "text_key": self.profile.text_key,
            "index_version": state.index_version,
            "projector": {"uri": self.projector_uri, "version": state.projector_version}
            if state.projector_version
            else None,
        }

    def picture(self, body: bytes, path: str | None, content_hash: str | None):
        """The query picture: the uploaded bytes, or a library file named by path or content hash
        (only under a library root; read with ingest's bounds)."""
        if content_hash:
            path = browse.path_of(self.home.catalog_path, content_hash)
        if path:
            if body:
                raise QueryError("send either an image or a library path, not both")
            return read_picture(browse.library_file(path, self.home.roots()), self.limits).convert(
                "RGB"
            )
        if not body:
            raise QueryError(
                "the request has no image: send the image file's bytes as the request body, "
                "or name a library file with ?path="
            )
        return decode_picture(body, "the uploaded file", self.limits).convert("RGB")

    def _crops(self, picture, ask: Query) -> tuple[list, list]:
        boxes = [Box.parse(b) for b in ask.boxes]
        return [crop(picture, box, "") for box in boxes] or [picture], boxes or [None]

    def _allow(self, vault: VaultQuery, where: browse.CatalogFilter):
        """The filter as a mask over the index's lookup rows (an index published before the lookup
        carried the details: asked of the catalog, candidate by candidate)."""
        if where.empty:
            return None
        lookup = vault.index.lookup
        if browse.lookup_has_details(lookup):
            mask = browse.filter_mask(lookup, where)
            return lambda rows: mask[rows]
        hashes = lookup.column("content_hash")

        def ask_catalog(rows):
            wanted = [hashes[int(r)].as_py() for r in rows]
            allowed = browse.details(self.home.catalog_path, wanted, where)
            return [h in allowed for h in wanted]

        return ask_catalog

    def _details(self, vault: VaultQuery, neighbors: list) -> list[dict]:
        lookup = vault.index.lookup
        if browse.lookup_has_details(lookup):
            rows = vault.index.rows_for(np.array([n.image_id for n in neighbors], dtype=np.int64))
            found = browse.lookup_details(lookup, [int(r) for r in rows])
        else:
            by_hash = browse.details(self.home.catalog_path, [n.content_hash for n in neighbors])
            found = [by_hash.get(n.content_hash, {}) for n in neighbors]
        return [{**details, **n.__dict__} for details, n in zip(found, neighbors)]

    def search(self, picture, ask: Query) -> dict:
        """The k nearest library images of each box (the whole picture without boxes), with their
        catalog details and the mixed text of their prompts. One shape for any number of boxes."""
        ask.check()
        self.refresh(wait=False)
        state = self.state
        crops, boxes = self._crops(picture, ask)
        allow = self._allow(state.vault, ask.where)
        results = []
        for box, embedding in zip(boxes, state.vault.embed_pictures(crops)):
            neighbors = state.vault.nearest(embedding, ask.k, ask.temperature, allow=allow)
            rows = self._details(state.vault, neighbors)
            results.append(
                {
                    "box": None if box is None else [box.x, box.y, box.width, box.height],
                    "neighbors": rows,
                    "mixed_prompt": browse.mixed_prompt([(n.prompt, n.weight) for n in neighbors]),
                }
            )
        return {"index_version": state.index_version, "k": ask.k, "results": results}

    def condition(self, picture, ask: Query):
        ask.check()
        self.refresh(wait=False)
        state = self.state
        crops, _ = self._crops(picture, ask)
        if ask.source == "projector" and state.projector is None:
            raise NotBuiltError(
                f"no projector at {self.projector_uri}: register one (luna build) or start the "
                "service with another --projector"
            )
        conditioning = state.vault.condition_crops(
            crops,
            ask.source,
            ask.k,
            ask.temperature,
            ask.with_prompt,
            projector=state.projector,
            allow=self._allow(state.vault, ask.where),
        )
        conditioning.info["projector_version"] = (
            state.projector_version if ask.source == "projector" else None
        )
        return conditioning

    def library_search(
        self, text: str, where: browse.CatalogFilter, page: int, per_page: int
    ) -> dict:
        total, items = browse.search_prompts(self.home.catalog_path, text, where, page, per_page)
        return {"total": total, "page": page, "per_page": per_page, "items": items}

    def library_path(self, path: str | None, content_hash: str | None):
        """The real file of a library image named by path or content hash, checked under the
        roots."""
        if content_hash:
            path = browse.path_of(self.home.catalog_path, content_hash)
        return browse.library_file(path or "", self.home.roots())
