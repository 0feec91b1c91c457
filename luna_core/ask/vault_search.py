"""Searching the vault: an image embedded by the profile's vision tower, its nearest library
images in the FAISS index (the vault's float16 rows re-rank the candidates), and text search where
the tower shares the text encoder's space."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from luna_core.ask.answers import Neighbor, load_image
from luna_core.ask.boxes import Box
from luna_core.ask.mixing import (
    DEFAULT_TEMPERATURE,
    check_inputs,
)
from luna_core.errors import QueryError
from luna_core.home.home import LunaHome
from luna_core.index.faiss_index import omp_threads
from luna_core.index.reranked import search_index
from luna_core.index.store import LoadedIndex, index_store, load_index
from luna_core.models.encoders import SDXLTextEncoder, VisionEncoder
from luna_core.models.profiles import ModelProfile, choose_device, choose_dtype
from luna_core.prompts.encode import encode_parsed
from luna_core.prompts.parsers import parse
from luna_core.vault.segments import open_text_store, open_vision_store
from luna_core.vault.store import RowStore


class VaultSearch:
    """A home's index and encoders, opened on first use; the search half of `VaultQuery`."""

    def __init__(
        self, home: LunaHome, profile: ModelProfile, device: str = "auto", dtype: str = "auto"
    ):
        self.home, self.profile = home, profile
        self.device_name, self.dtype_name = device, dtype
        self._index: LoadedIndex | None = None
        self._vision = None
        self._text = None
        self._store: RowStore | None = None

    @property
    def index(self) -> LoadedIndex:
        if self._index is None:
            loaded = load_index(index_store(self.home, self.profile), fall_back=True)
            if loaded.meta.get("vision_key") != self.profile.vision_key:
                raise QueryError(
                    f"the index at {loaded.version.path} was built with vision model "
                    f"{loaded.meta.get('vision_key')}, not the configured "
                    f"{self.profile.vision_key}; "
                    "rebuild it or configure that model"
                )
            if loaded.index.ntotal == 0:
                raise QueryError(
                    f"the index at {loaded.version.path} is empty: ingest and embed some images "
                    "first"
                )
            self._index = loaded.reranked_from(open_vision_store(self.home, self.profile))
        return self._index

    def _device_dtype(self):
        device = choose_device(self.device_name)
        dtype = choose_dtype(
            device, self.profile.default_dtype if self.dtype_name == "auto" else self.dtype_name
        )
        return device, dtype

    def _encoder(self):
        if self._vision is None:
            self._vision = VisionEncoder(
                self.profile.vision_model, self.profile.vision_revision, *self._device_dtype()
            )
        return self._vision

    def adopt_encoders(self, other: "VaultSearch") -> None:
        """Use the encoders `other` already loaded (same profile and device): a new index, no
        model reload."""
        self._vision, self._text = other._vision, other._text

    @property
    def vision(self):
        """The vision encoder, checked against the index it queries."""
        encoder = self._encoder()
        if encoder.width != self.index.meta.get("dims"):
            raise QueryError(
                f"the vision model gives {encoder.width}-d embeddings, the index holds "
                f"{self.index.meta.get('dims')}-d ones"
            )
        return encoder

    @property
    def text_store(self) -> RowStore:
        if self._store is None:
            self._store = open_text_store(self.home, self.profile)
        return self._store

    def embed(self, image) -> np.ndarray:
        return self.embed_pictures([image])[0]

    def nearest(
        self,
        embedding: np.ndarray,
        k: int,
        temperature: float = DEFAULT_TEMPERATURE,
        exclude: frozenset[int] = frozenset(),
        allow=None,
    ) -> list[Neighbor]:
        """The k nearest images still in the library, weighted by softmax(similarity / temperature);
        image ids in `exclude` are skipped (an evaluation leaves the query image out of its own
        answer). `allow(lookup_rows) -> bool per row`, when given, says which candidates a
        person's filters let through: then fewer than k may come back, never none."""
        check_inputs(k=k, temperature=temperature)
        index = self.index
        total, present = int(index.index.ntotal), int(index.lookup.num_rows)
        if k > present:
            raise QueryError(
                f"k={k} is larger than the library the index answers for ({present} images)"
            )
        # Images gone since the build are still in the index (until the next rebuild) but not in the
        # lookup: search deeper until k present ones are found or the whole index has been seen.
        query = np.ascontiguousarray(embedding[None], dtype=np.float32)
        fetch = min(total, (k if allow is None else 8 * k) + len(exclude) + 16)
        exhaustive = False
        while True:
            # OpenMP's thread count is per calling thread: concurrent queries keep theirs
            with omp_threads(1):
                sims, ids = search_index(index.index, query, fetch, every_list=exhaustive)
            rows = index.rows_for(ids[0])
            found = [
                (float(s), int(i), int(r))
                for s, i, r in zip(sims[0], ids[0], rows)
                if r >= 0 and i >= 0 and int(i) not in exclude
            ]
            if allow is not None and found:
                allowed = allow(np.array([r for _, _, r in found], dtype=np.int64))
                found = [f for f, ok in zip(found, allowed) if ok]
            keep = found[:k]
            if len(keep) == k or (fetch >= total and exhaustive):
                break
            # The whole index asked for and still short: an IVF index probed only some lists; probe
            # all.
            exhaustive = fetch >= total
            fetch = min(total, fetch * 4)
        if not keep and allow is not None:
            raise QueryError("no image in the library matches the filters")
        if len(keep) < k and allow is None:
            raise QueryError(
                f"only {len(keep)} of the k={k} nearest indexed images are still in the library; "
                "lower k or rebuild the index"
            )
        scores = np.array([s for s, _, _ in keep])
        weights = np.exp((scores - scores.max()) / temperature)
        weights /= weights.sum()
        lookup = index.lookup
        out = []
        for (sim, image_id, row), weight in zip(keep, weights):
            values = {
                column: lookup.column(column)[row].as_py()
                for column in ("path", "prompt", "negative_prompt", "generator", "content_hash")
            }
            # indexes published before them lack these
            for column, empty in (
                ("loras", []),
                ("lora_hashes", None),
                ("prompt_syntax", None),
            ):
                values[column] = (
                    (lookup.column(column)[row].as_py() or empty)
                    if column in lookup.column_names
                    else empty
                )
            out.append(Neighbor(image_id, sim, float(weight), **values))
        return out

    def search(self, image_path: str | Path, box: Box | None = None, k: int = 5) -> list[Neighbor]:
        return self.nearest(self.embed(load_image(image_path, box)), k)

    def search_text(self, prompt: str, k: int = 5) -> list[Neighbor]:
        """The library images nearest to a prompt's pooled embedding: only where the profile's
        vision tower shares SDXL's pooled space (the trained tiny world); elsewhere the two
        spaces are unrelated."""
        if not self.profile.shared_space:
            raise QueryError(
                f"text search needs a vision encoder trained in SDXL's pooled text space; the "
                f"'{self.profile.name}' profile's vision encoder and text encoders are different "
                "CLIP models"
            )
        if not prompt.strip():
            raise QueryError("text search needs some text")
        pooled = self.encode_prompt(prompt)[1].astype(np.float32)
        return self.nearest(pooled / max(float(np.linalg.norm(pooled)), 1e-12), k)

    def embed_pictures(self, images: list, use_index: bool = True) -> np.ndarray:
        """[N, D] embeddings of N pictures in one forward pass; `use_index=False` skips opening the
        index (a projector needs none), else the encoder is checked against the index's width."""
        encoder = self.vision if use_index else self._encoder()
        return encoder.embed_pixels(np.stack([encoder.preprocess(image) for image in images]))

    def encode_prompt(
        self, prompt: str, syntax: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """A typed prompt's conditioning ([77·c, D], [P]), read by `syntax` (default: the
        `prompts.syntax` setting, a1111): weights, BREAK and long prompts as that writer reads
        them."""
        if self._text is None:
            self._text = SDXLTextEncoder(
                self.profile.sdxl_model, self.profile.sdxl_revision, *self._device_dtype()
            )
        syntax = syntax or self.home.settings().text("prompts.syntax")
        return encode_parsed(self._text, parse(prompt, syntax))
