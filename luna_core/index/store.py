"""Versioned index files, swapped in atomically, with everything a query needs published beside
them.

    HOME/index/<vision store key>__<text store key>/
        current.json            {"version": 12}: replaced atomically (write + rename)
        versions/v000012/
            index.faiss         the FAISS index (ids: catalog image ids)
            lookup.arrow        image id -> path, prompt, negative prompt, conditioning rows, split
            meta.json           models, stores, plan, recall, latency, build time

A query reads current.json, then that version's files: it never opens the catalog, so queries keep
working while any asset is being materialized (DuckDB admits no reader while a process writes).
Old versions are kept a while so a reader that has just read the pointer still finds its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from luna_core.errors import CorruptStoreError, NotBuiltError
from luna_core.home.home import LunaHome
from luna_core.home.storage import is_remote, location, remove_tree, write_whole
from luna_core.index.faiss_index import reranks_from_vault, searcher_for
from luna_core.index.reranked import RerankedIndex, id_positions
from luna_core.models.profiles import ModelProfile

log = logging.getLogger(__name__)

KEEP_VERSIONS = 3
INDEX_FILE, LOOKUP_FILE = "index.faiss", "lookup.arrow"


def file_digest(path: Path) -> str:
    """SHA-256 of a file, read in 8 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class IndexVersion:
    number: int
    path: Path

    @property
    def index_file(self) -> Path:
        return self.path / "index.faiss"

    @property
    def lookup_file(self) -> Path:
        return self.path / "lookup.arrow"

    @property
    def meta_file(self) -> Path:
        return self.path / "meta.json"

    def meta(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptStoreError(
                f"index metadata {self.meta_file} is missing or corrupted ({exc}); "
                "rebuild the index (materialize faiss_index with rebuild: true)"
            ) from None


class IndexStore:
    """Index versions under `root`, on disk or object storage. On object storage a version is
    written file by file, then the pointer (one PUT) names it; readers load a verified local copy
    under `cache`."""

    def __init__(self, root, cache: Path | None = None):
        self.root = location(root)
        self.remote = is_remote(self.root)
        self.cache = (
            Path(cache)
            if cache
            else Path(tempfile.gettempdir())
            / "luna-index-cache"
            / hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        )

    def local(self, version: IndexVersion) -> IndexVersion:
        """The version's files on this machine (a copy of an object-storage version, made once)."""
        if not self.remote:
            return version
        target = self.cache / version.path.name
        if (
            target.is_dir()
            and (target / "meta.json").read_bytes() != (version.path / "meta.json").read_bytes()
        ):
            # the store was rebuilt: this copy is of another index
            shutil.rmtree(target, ignore_errors=True)
        if not target.is_dir():
            self.cache.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache))
            try:
                for name in ("meta.json", INDEX_FILE, LOOKUP_FILE):
                    (staging / name).write_bytes((version.path / name).read_bytes())
                os.rename(staging, target)
            except FileNotFoundError as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise CorruptStoreError(
                    f"index version {version.path} lacks a file ({exc}); rebuild the index"
                ) from None
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                if not target.is_dir():  # another reader's copy won the rename: use it
                    raise
        return IndexVersion(version.number, target)

    @property
    def pointer(self) -> Path:
        return self.root / "current.json"

    def current_number(self) -> int | None:
        """The version the pointer names (None: no pointer, or one that cannot be read)."""
        try:
            return int(json.loads(self.pointer.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def current(self) -> IndexVersion | None:
        if not self.pointer.exists():
            return None
        try:
            number = int(json.loads(self.pointer.read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreError(
                f"index pointer {self.pointer} is corrupted ({exc}); rebuild the index"
            ) from None
        version = IndexVersion(number, self.root / "versions" / f"v{number:06d}")
        if not version.path.is_dir():
            raise CorruptStoreError(
                f"index version {version.path} named by {self.pointer} is missing; rebuild the "
                "index"
            )
        return version

    def older_versions(self, below: int) -> list[IndexVersion]:
        """Kept versions older than `below`, newest first."""
        numbers = sorted(
            (
                int(p.name[1:])
                for p in (self.root / "versions").glob("v[0-9]*")
                if p.name[1:].isdigit() and int(p.name[1:]) < below
            ),
            reverse=True,
        )
        return [IndexVersion(n, self.root / "versions" / f"v{n:06d}") for n in numbers]

    @contextlib.contextmanager
    def _publishing(self):
        """One publisher at a time on this machine (the nightly rebuild and an automation run may
        meet): the version number, the files and the pointer move together. Object storage has no
        lock: there a number is claimed (below) and the pointer never moves back."""
        if self.remote:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".publish.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _claim(self, versions, existing: list[int]) -> int:
        """The next version number, claimed on object storage by a marker: of two publishers that
        picked the same number, the one whose marker sorts first keeps it; the other takes the
        next one."""
        token = uuid.uuid4().hex
        number = max(existing, default=0) + 1
        claims = versions / ".claims"
        for _ in range(64):
            (claims / f"v{number:06d}-{token}").write_bytes(b"")
            rivals = sorted(p.name for p in claims.glob(f"v{number:06d}-*"))
            if rivals and rivals[0].endswith(token):
                return number
            number += 1
        raise CorruptStoreError(
            f"index store {self.root}: no version number could be claimed; is a publisher stuck?"
        )

    def publish(self, index, lookup, meta: dict) -> IndexVersion:
        """Write a new version next to the current one, then point readers at it in one rename."""
        with self._publishing():
            return self._publish(index, lookup, meta)

    def _publish(self, index, lookup, meta: dict) -> IndexVersion:
        versions = self.root / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        existing = [int(p.name[1:]) for p in versions.glob("v[0-9]*") if p.name[1:].isdigit()]
        number = self._claim(versions, existing) if self.remote else max(existing, default=0) + 1
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=None if self.remote else versions))
        try:
            faiss.write_index(index, str(staging / "index.faiss"))
            with (
                pa.OSFile(str(staging / "lookup.arrow"), "wb") as sink,
                pa.ipc.new_file(sink, lookup.schema) as writer,
            ):
                writer.write_table(lookup)
            sizes = {
                "index_bytes": (staging / "index.faiss").stat().st_size,
                "lookup_bytes": (staging / "lookup.arrow").stat().st_size,
            }
            digests = {name: file_digest(staging / name) for name in (INDEX_FILE, LOOKUP_FILE)}
            (staging / "meta.json").write_text(
                json.dumps(
                    {**meta, **sizes, "digests": digests, "version": number}, indent=2, default=str
                )
            )
            final = versions / f"v{number:06d}"
            if self.remote:  # the pointer, written last, is what makes the version visible
                for name in (INDEX_FILE, LOOKUP_FILE, "meta.json"):
                    (final / name).write_bytes((staging / name).read_bytes())
                shutil.rmtree(staging, ignore_errors=True)
            else:
                os.rename(staging, final)
        except BaseException:
            # a failed publish (disk full…) leaves nothing behind
            shutil.rmtree(staging, ignore_errors=True)
            raise
        current = self.current_number()
        # a slower publisher of an older number never moves it back
        if current is None or number > current:
            write_whole(self.pointer, json.dumps({"version": number}).encode())
        for old in sorted(existing)[: max(0, len(existing) - (KEEP_VERSIONS - 1))]:
            remove_tree(versions / f"v{old:06d}")
        return IndexVersion(number, final)


def vault_fetch(vision, ids: np.ndarray, rows: np.ndarray):
    """A re-ranking `fetch` over the vault: image ids → their vision rows → the rows' float16
    values, read straight from the store's shard files (the page cache keeps what queries touch)."""
    order = np.argsort(ids)
    sorted_ids, sorted_rows = ids[order], rows[order]
    width = vision.fields["embeds"][0]

    def fetch(wanted: np.ndarray):
        pos, found = id_positions(sorted_ids, wanted)
        vectors = np.zeros((len(wanted), width), dtype=np.float16)
        if found.any():
            vectors[found] = vision.read_rows("embeds", sorted_rows[pos[found]])
        return vectors, found

    return fetch


@dataclass
class LoadedIndex:
    version: IndexVersion
    index: object
    meta: dict
    ids: np.ndarray  # sorted image ids of the lookup
    order: np.ndarray  # lookup row of each sorted id
    lookup: object  # pyarrow.Table
    fell_back_from: int | None = None  # the damaged current version this one stands in for

    def reranked_from(self, vision) -> "LoadedIndex":
        """For an index that re-ranks from the vault: its search re-ranks against `vision`'s
        rows."""

        if reranks_from_vault(self.meta.get("plan", {})) and not isinstance(
            self.index, RerankedIndex
        ):
            fetch = vault_fetch(
                vision,
                self.lookup.column("image_id").to_numpy(),
                self.lookup.column("vision_row").to_numpy(),
            )
            self.index = searcher_for(self.index, self.meta, fetch)
        return self

    def rows_for(self, image_ids: np.ndarray) -> np.ndarray:
        """Lookup rows of the given ids; -1 for ids no longer in the library (missing files)."""
        pos, found = id_positions(self.ids, image_ids)
        return np.where(found, self.order[pos], -1)


def load_index(store: IndexStore, fall_back: bool = False) -> LoadedIndex:
    """The current version, its files checked against the digests recorded when it was published.
    A damaged version is a CorruptStoreError naming the file; with `fall_back`, the newest older
    version that verifies is served instead (and says so in the log), never the damaged one."""
    current = store.current()
    if current is None:
        raise NotBuiltError(
            f"no index at {store.root} yet: run `luna build` (or materialize faiss_index in the UI)"
        )
    try:
        return _load_version(store.local(current))
    except CorruptStoreError as damaged:
        if not fall_back:
            raise
        for older in store.older_versions(current.number):
            try:
                loaded = _load_version(store.local(older))
            except CorruptStoreError:
                continue
            log.warning(
                "%s; answering from the previous good version v%d until the index is rebuilt",
                damaged,
                older.number,
            )
            loaded.fell_back_from = current.number
            return loaded
        raise


def _load_version(version: IndexVersion) -> LoadedIndex:
    meta = version.meta()
    for name, expected in (meta.get("digests") or {}).items():
        path = version.path / name
        try:
            actual = file_digest(path)
        except OSError as exc:
            raise CorruptStoreError(
                f"index file {path} is missing ({exc.strerror or exc}); rebuild the index "
                "(luna build, or materialize faiss_index with rebuild: true)"
            ) from None
        if actual != expected:
            raise CorruptStoreError(
                f"index file {path} is corrupted: its SHA-256 differs from the one recorded when "
                "it was published; rebuild the index (luna build)"
            )
    try:
        index = faiss.read_index(str(version.index_file))
    except RuntimeError as exc:
        raise CorruptStoreError(
            f"index file {version.index_file} cannot be read ({str(exc).splitlines()[0][:200]}); "
            "it is missing or corrupted: rebuild the index"
        ) from None
    try:
        with pa.memory_map(str(version.lookup_file)) as source:
            lookup = pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise CorruptStoreError(
            f"index lookup {version.lookup_file} is missing or corrupted ({exc}); rebuild the index"
        ) from None
    ids = lookup.column("image_id").to_numpy()
    order = np.argsort(ids)
    return LoadedIndex(version, index, meta, ids[order], order, lookup)


def index_store(home: LunaHome, profile: ModelProfile) -> IndexStore:
    """The profile's index versions; on object storage, read through a local copy under the home."""
    folder = home.index_dir(profile)
    return IndexStore(folder, cache=home.root / "cache" / "index" / folder.name)
