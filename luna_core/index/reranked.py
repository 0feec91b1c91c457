"""An approximate index whose candidates are re-ranked exactly against vectors fetched by id (the
vault's own rows, or the build's copy in memory), probing per query; and the id lookups it rests
on."""

from __future__ import annotations

import functools
import math

import faiss
import numpy as np


def faiss_module():
    """faiss, imported on first use: a second of start-up that commands without an index need not
    pay."""

    return faiss


class RerankedIndex:
    """An approximate index whose candidates (k_factor x k) are re-ranked by exact inner products
    with vectors fetched by id, the vault's own rows: the exact copy stays on disk, not in RAM.
    `fetch(ids)` returns (float vectors [n, d], found mask); ids not found (images gone) are left
    out of answers.

    With `probe_margin`, each query probes its own number of lists (SPANN's query-aware pruning):
    the lists whose centroid is at most (1 + margin) times as far (squared distance) as its
    nearest one, up to `max_probes`. A query inside a small, well-separated cluster scans a list
    or two; one inside a dense region scans all the lists that split it. One nprobe for all must
    be as large as the densest region needs, and every query pays for it."""

    def __init__(
        self, index, fetch, k_factor: float, probe_margin: float | None = None, max_probes: int = 0
    ):
        self.index, self.fetch, self.k_factor = index, fetch, float(k_factor)
        self.probe_margin, self.max_probes = probe_margin, int(max_probes)
        self._coarse = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @functools.cached_property
    def ivf(self):
        """The IVF layer inside the wrapped index (adds fill its lists; it is never replaced)."""
        return index_layers(self.index)[0]

    def search(
        self, queries: np.ndarray, k: int, every_list: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top k by exact inner product among the candidates; `every_list`: probe all the IVF lists
        (per call, never set on the shared index, so concurrent searches stay apart)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        depth = int(min(self.ntotal, max(k, math.ceil(k * self.k_factor))))
        ivf = self.ivf
        if every_list and ivf is not None:
            _, candidates = self.index.search(queries, depth, params=every_list_params(self.index))
        elif self.probe_margin is None or ivf is None or ivf.nprobe >= ivf.nlist:
            _, candidates = self.index.search(queries, depth)
        else:
            candidates = (
                np.stack([self._probe(query, depth) for query in queries])
                if len(queries)
                else np.zeros((0, depth), dtype=np.int64)
            )
        sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for q, (query, found_ids) in enumerate(zip(queries, candidates)):
            found_ids = found_ids[found_ids >= 0]
            vectors, found = self.fetch(found_ids)
            exact = np.where(found, vectors.astype(np.float32, copy=False) @ query, -np.inf)
            order = np.argsort(-exact, kind="stable")[: min(k, int(found.sum()))]
            sims[q, : len(order)], ids[q, : len(order)] = exact[order], found_ids[order]
        return sims, ids

    def lists_for(self, query: np.ndarray, depth: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(lists, inner products with their centroids) this query probes, nearest first, with more
        of the nearest ones while the chosen lists hold fewer than `depth` codes (a query on a
        small list's centroid has a margin of ~0). The centroids are ranked by one matrix-vector
        product over all of them (~0.05 ms for 2,048 x 1,024 floats, faster than the HNSW
        quantizer's walk), read in place from the quantizer's storage: no second copy."""
        ivf = self.ivf
        if self._coarse is None:  # adds fill lists, never new centroids
            faiss = faiss_module()
            quantizer = faiss.downcast_index(ivf.quantizer)
            flat = (
                faiss.downcast_index(quantizer.storage)
                if hasattr(quantizer, "storage")
                else quantizer
            )
            if isinstance(flat, faiss.IndexFlat):
                centroids = faiss.rev_swig_ptr(flat.get_xb(), ivf.nlist * ivf.d).reshape(
                    ivf.nlist, ivf.d
                )
            else:
                centroids = flat.reconstruct_n(0, ivf.nlist)
            self._coarse = (centroids, np.einsum("ij,ij->i", centroids, centroids))
        centroids, norms = self._coarse
        sims = centroids @ query
        # Squared distances; rounding makes one a hair below 0 for a query on a centroid (then the
        # margin would keep nothing).
        dist = np.maximum(float(query @ query) + norms - 2 * sims, 0.0)
        chosen = np.flatnonzero(dist <= dist.min() * (1 + self.probe_margin))
        limit = max(1, min(self.max_probes or ivf.nlist, ivf.nlist))
        if len(chosen) > limit:
            chosen = chosen[np.argpartition(dist[chosen], limit - 1)[:limit]]
        chosen = chosen[np.argsort(dist[chosen], kind="stable")]
        if depth and len(chosen) < limit and not self._hold(chosen, depth):
            nearest = np.argsort(dist, kind="stable")[:limit]
            held = np.cumsum([ivf.invlists.list_size(int(list_no)) for list_no in nearest])
            chosen = nearest[: max(len(chosen), int(np.searchsorted(held, depth)) + 1)]
        return chosen, sims[chosen]

    def _hold(self, lists: np.ndarray, depth: int) -> bool:
        """Whether these lists hold at least `depth` codes (stops counting once they do)."""
        held = 0
        for list_no in lists.tolist():
            held += self.ivf.invlists.list_size(list_no)
            if held >= depth:
                return True
        return False

    def _probe(self, query: np.ndarray, depth: int) -> np.ndarray:
        """Catalog ids of the `depth` best codes in this query's lists (-1 past the end)."""
        faiss = faiss_module()
        lists, sims = self.lists_for(query, depth)
        ivf = self.ivf
        lists = np.ascontiguousarray(lists, dtype=np.int64)[None]
        sims = np.ascontiguousarray(sims, dtype=np.float32)[None]
        distances = np.empty((1, depth), dtype=np.float32)
        labels = np.empty((1, depth), dtype=np.int64)
        params = faiss.SearchParametersIVF()
        params.nprobe = lists.shape[
            1
        ]  # per call, not on the shared index: concurrent queries stay apart
        ivf.search_preassigned_c(
            1,
            faiss.swig_ptr(query),
            depth,
            faiss.swig_ptr(lists),
            faiss.swig_ptr(sims),
            faiss.swig_ptr(distances),
            faiss.swig_ptr(labels),
            False,
            params,
        )
        labels = labels[0]
        if not hasattr(self.index, "id_map"):
            return labels
        # The IVF inside the IDMap holds positions; a fresh view of the id map each time (adds
        # reallocate it).
        id_map = faiss.rev_swig_ptr(self.index.id_map.data(), self.index.id_map.size())
        return np.where(labels >= 0, id_map[np.maximum(labels, 0)], -1)


def every_list_params(index):
    """Search parameters that probe every IVF list of `index` (an IDMap over an IVF, with or without
    a Refine layer): passed to one call, unlike `nprobe` set on the index, which every thread
    shares."""
    faiss = faiss_module()
    ivf, refine = index_layers(index)
    params = faiss.SearchParametersIVF()
    params.nprobe = ivf.nlist
    if refine is not None:
        refined = faiss.IndexRefineSearchParameters()
        refined.k_factor = refine.k_factor
        refined.base_index_params = params
        refined.thisown_params = params  # keep the inner parameters alive with the outer ones
        return refined
    return params


def search_index(index, queries: np.ndarray, k: int, every_list: bool = False):
    """(similarities, ids) of a RerankedIndex or a plain FAISS index; `every_list` per call."""
    if isinstance(index, RerankedIndex):
        return index.search(queries, k, every_list)
    ivf, _ = index_layers(index)
    if every_list and ivf is not None:
        return index.search(queries, k, params=every_list_params(index))
    return index.search(queries, k)


def id_positions(sorted_ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `sorted_ids`, found) of each wanted id; a position is meaningless where not
    found."""
    pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, max(0, len(sorted_ids) - 1))
    return pos, (len(sorted_ids) > 0) & (sorted_ids[pos] == wanted)


def memory_fetch(vectors: np.ndarray, ids: np.ndarray):
    """A `fetch` over vectors held in memory (the build's own copy), by id."""
    order = np.argsort(ids)
    sorted_ids = ids[order]

    def fetch(wanted: np.ndarray):
        pos, found = id_positions(sorted_ids, wanted)
        return vectors[order[pos]], found

    return fetch


def index_layers(index):
    """The IVF and Refine layers inside the IDMap wrapper (either may be absent)."""
    faiss = faiss_module()
    if isinstance(index, RerankedIndex):
        index = index.index
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    refine = inner if isinstance(inner, faiss.IndexRefine) else None
    base = faiss.downcast_index(refine.base_index) if refine is not None else inner
    ivf = faiss.extract_index_ivf(base) if not isinstance(base, faiss.IndexFlat) else None
    return ivf, refine
