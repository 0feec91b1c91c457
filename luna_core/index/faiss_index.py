"""The FAISS index over image embeddings: chosen by size and memory budget, measured at every build.

- Small libraries get an exact inner-product scan (`Flat`).
- Past `flat_max_vectors`, or when exact does not fit the memory budget: an IVF index with 8-bit
  scalar-quantized vectors whose candidates (k_factor x k) are re-ranked exactly. The exact copy is
  the vault's own float16 rows: while a copy in RAM is small (`rerank_in_ram_max_bytes`) it is kept
  inside the index (`IVF,SQ8,Refine(SQfp16)`), past it the candidates are re-ranked from the vault's
  shard files (`RerankedIndex`), so RAM per vector is the 8-bit code alone (~1 byte a dimension) and
  the page cache holds what queries touch. Such an index probes per query: the lists whose
  centroid is within a margin of the nearest one (a query in a dense region scans all the lists
  that split it, one in a small cluster one or two), instead of one nprobe sized for the densest
  region. Many lists get an HNSW coarse quantizer for fixed-nprobe searches. PQ codes were
  measured here to lose too many true neighbours on tightly clustered embeddings (recall@10 0.84
  at 100 re-ranked candidates; PQ fast-scan 0.62 at 600), and OPQ to cost tens of minutes of
  training on two cores.
- Tighter budgets: IVF-PQ codes, re-ranked from the vault the same way (lower recall; the build
  measures and shows it).

At every build, `held_out` vectors are kept out while the index is trained and filled; recall@10
against exact search is measured on them, the probing (margin, else `nprobe`) and the re-ranked
candidates are tuned to the cheapest setting reaching `target_recall`, then the held-out vectors are
added too. Ids are the catalog's stable image ids.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from luna_core.index.reranked import RerankedIndex, faiss_module, index_layers, memory_fetch

GIB = 1024**3


@dataclass(frozen=True)
class IndexSettings:
    memory_budget_bytes: int = 4 * GIB
    # An exact re-ranking copy in RAM up to this size (fastest); past it, re-ranking reads the
    # vault's rows.
    rerank_in_ram_max_bytes: int = 256 * 1024**2
    hnsw_quantizer_min_nlist: int = 1024
    flat_max_vectors: int = 20_000  # exact scan up to here: ~3 ms a query at CLIP widths
    target_recall: float = 0.99
    # candidates re-ranked per result (the smallest of k_factor_choices that reaches the target)
    k_factor: int = 10
    k_factor_choices: tuple[int, ...] = (2, 3, 5, 10, 25, 50, 100)
    held_out: int = 500
    # Vectors of images that left the library: removed from exact indexes; IVF indexes cannot
    # remove, so they stay unanswered (absent from the lookup) until this share of the index
    # triggers a rebuild.
    max_retired_share: float = 0.1
    nprobe_choices: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    # Indexes re-ranked from the vault probe per query (`RerankedIndex`): every list whose centroid
    # lies within (1 + margin) x the squared distance of the nearest one, at most max_probe_share of
    # the lists.
    probe_margin_choices: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
    max_probe_share: float = 0.5
    seed: int = 1234


@dataclass(frozen=True)
class IndexPlan:
    kind: (
        str  # flat | ivfsq8_refine | ivfsq8_vault | ivfpq_vault (older homes: ivfpq_refine | ivfpq)
    )
    factory: str
    nlist: int = 0
    m: int = 0
    estimated_bytes: int = 0


@dataclass
class BuildStats:
    plan: dict
    vectors: int
    dims: int
    build_seconds: float
    recall_at_10: float
    nprobe: int
    queries: int
    p50_ms: float
    p99_ms: float
    recall_by_nprobe: dict[str, float] = field(default_factory=dict)
    search: dict = field(default_factory=dict)  # nprobe, k_factor and where re-ranking reads


def _pq_m(d: int) -> int:
    """PQ sub-quantizers: 64 for CLIP widths (16 dims each), fewer when the width is small."""
    for m in (64, 32, 16, 8, 4, 2, 1):
        if d % m == 0 and d // m >= 2:
            return m
    return 1


def plan_index(n: int, d: int, settings: IndexSettings = IndexSettings()) -> IndexPlan:
    flat_bytes = n * (d * 4 + 16)
    if n <= settings.flat_max_vectors and flat_bytes <= settings.memory_budget_bytes:
        return IndexPlan("flat", "Flat", estimated_bytes=flat_bytes)
    # ~4 sqrt(N) lists: fine enough that residuals (what PQ encodes) are small against the data's
    # own cluster structure; then the 10 x k re-ranked candidates hold the true neighbours.
    nlist = int(min(65536, max(16, 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n)))))))
    nlist = min(nlist, max(16, n // 39))  # FAISS wants ~39+ training points per list
    m = _pq_m(d)
    hnsw = nlist >= settings.hnsw_quantizer_min_nlist
    ivf = f"IVF{nlist}_HNSW32" if hnsw else f"IVF{nlist}"
    coarse = nlist * d * 4 + (nlist * 32 * 2 * 4 if hnsw else 0)
    codes, copy = n * (d + 16) + coarse, n * d * 2  # 16: the id in its list and in the id map
    if codes + copy <= settings.memory_budget_bytes and copy <= settings.rerank_in_ram_max_bytes:
        return IndexPlan("ivfsq8_refine", f"{ivf},SQ8,Refine(SQfp16)", nlist, 0, codes + copy)
    if codes <= settings.memory_budget_bytes:
        return IndexPlan("ivfsq8_vault", f"{ivf},SQ8", nlist, 0, codes)
    return IndexPlan("ivfpq_vault", f"{ivf},PQ{m}", nlist, m, n * (m + 16) + coarse)


def reranks_from_vault(plan: dict | IndexPlan) -> bool:
    kind = plan.kind if isinstance(plan, IndexPlan) else plan.get("kind", "")
    return kind.endswith("_vault")


def searcher_for(index, meta: dict, fetch):
    """The index as queries search it: re-ranked through `fetch` when its plan re-ranks from the
    vault."""
    if not reranks_from_vault(meta.get("plan", {})):
        return index
    params = meta.get("search_params", {})
    return RerankedIndex(
        index,
        fetch,
        params.get("k_factor") or 2,
        params.get("probe_margin"),
        params.get("max_probes") or 0,
    )


def set_search_params(
    index,
    nprobe: int | None,
    k_factor: int | None,
    probe_margin: float | None = None,
    max_probes: int = 0,
) -> None:
    """A fixed `nprobe` for every query, or (a `RerankedIndex` only) per-query probing within
    `probe_margin`, at most `max_probes` lists (then also the nprobe of a plain search)."""
    ivf, refine = index_layers(index)
    if isinstance(index, RerankedIndex):
        index.probe_margin, index.max_probes = probe_margin, int(max_probes)
        nprobe = max_probes if probe_margin is not None else nprobe
    if ivf is not None and nprobe:
        ivf.nprobe = nprobe
    if refine is not None and k_factor:
        refine.k_factor = float(k_factor)
    if isinstance(index, RerankedIndex) and k_factor:
        index.k_factor = float(k_factor)
    quantizer = faiss_module().downcast_index(ivf.quantizer) if ivf is not None else None
    if nprobe and hasattr(quantizer, "hnsw"):
        # find the nprobe nearest lists, not merely near ones
        quantizer.hnsw.efSearch = max(64, 2 * nprobe)


@contextlib.contextmanager
def probing_every_list(index, enabled: bool = True):
    """Within the block, an IVF index probes all its lists (an exact scan of its codes)."""
    ivf, _ = index_layers(index)
    if not enabled or ivf is None:
        yield
        return
    before = ivf.nprobe
    ivf.nprobe = ivf.nlist
    try:
        yield
    finally:
        ivf.nprobe = before


def search_params(index) -> dict:
    ivf, refine = index_layers(index)
    k_factor = (
        index.k_factor
        if isinstance(index, RerankedIndex)
        else refine.k_factor
        if refine is not None
        else 0.0
    )
    params = {
        "nprobe": int(ivf.nprobe) if ivf is not None else 0,
        "k_factor": float(k_factor),
        "rerank": "vault"
        if isinstance(index, RerankedIndex)
        else "index"
        if refine is not None
        else "none",
    }
    if isinstance(index, RerankedIndex) and index.probe_margin is not None:
        params.update(
            probing=f"per query: the lists at most {1 + index.probe_margin:g}x as far (squared "
            "distance) as "
            f"the nearest one, up to {index.max_probes}",
            probe_margin=index.probe_margin,
            max_probes=index.max_probes,
        )
    return params


def exact_neighbors(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    faiss = faiss_module()
    flat = faiss.IndexFlatIP(base.shape[1])
    flat.add(base)
    return flat.search(queries, k)[1]


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


@contextlib.contextmanager
def omp_threads(threads: int):
    """FAISS's OpenMP threads for a block. One query gains nothing from more, and FAISS's and
    torch's thread pools handing the cores back and forth cost milliseconds per answer (measured
    here)."""
    faiss = faiss_module()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def single_query_latency(
    index, queries: np.ndarray, k: int = 10, threads: int = 1
) -> tuple[float, float]:
    """(p50, p99) milliseconds of one-query searches, one at a time, with `threads` OpenMP
    threads."""
    times = []
    with omp_threads(threads):
        for q in queries:
            started = time.perf_counter()
            index.search(q[None], k)
            times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _cheapest(
    searcher,
    probings: list,
    settings: IndexSettings,
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    recalls: dict,
) -> tuple[float, dict, int]:
    """(recall, probing, k_factor): the first of `probings` (in order of cost) reaching the target
    recall, trying more candidates (k_factor) while they help; else the best seen. Every recall
    goes in `recalls`."""
    best = (-1.0, probings[0][1], settings.k_factor_choices[0])
    for k_factor in settings.k_factor_choices:
        before = best[0]
        for label, probing in probings:
            set_search_params(searcher, k_factor=k_factor, **probing)
            recall = recall_at(searcher.search(queries, k)[1], truth)
            recalls[f"{label},k_factor={k_factor}"] = round(recall, 4)
            if recall > best[0]:
                best = (recall, probing, k_factor)
            if recall >= settings.target_recall:
                break
        if best[0] >= settings.target_recall or best[0] < before + 0.001:
            break  # reached, or more candidates no longer help: the probes are what limits
    return best


def build_index(
    vectors: np.ndarray,
    ids: np.ndarray,
    settings: IndexSettings = IndexSettings(),
    log=None,
    fetch=None,
) -> tuple[object, BuildStats]:
    """Train, fill, tune and measure an index over unit vectors `vectors` [N, D] with int64 `ids`. A
    plan re-ranking from the vault is tuned and timed through `fetch` (the vault's rows by id;
    default: these vectors). Returns the FAISS index (without the re-ranking wrapper) and its
    stats."""
    faiss = faiss_module()
    started = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    n, d = vectors.shape
    plan = plan_index(n, d, settings)
    rng = np.random.default_rng(settings.seed)
    held = (
        rng.choice(n, size=min(settings.held_out, max(0, n // 10)), replace=False)
        if n >= 20
        else np.array([], int)
    )
    keep = np.ones(n, bool)
    keep[held] = False
    base, base_ids, queries = vectors[keep], ids[keep], vectors[held]

    index = faiss.IndexIDMap2(faiss.index_factory(d, plan.factory, faiss.METRIC_INNER_PRODUCT))
    if plan.kind != "flat":
        # ~40 points per list: FAISS's floor, and fast
        train_n = min(len(base), max(plan.nlist * 40, 20_000))
        sample = base[rng.choice(len(base), size=train_n, replace=False)]
        ivf, _ = index_layers(index)
        # coarse k-means: 10 rounds reach most of the gain at a fraction of 25's time
        ivf.cp.niter = 10
        if "pq" in plan.kind:
            faiss.downcast_index(
                ivf
            ).pq.cp.max_points_per_centroid = 64  # 16k points per codebook: 4x faster
        if log:
            log(f"training {plan.factory} on {train_n:,} vectors")
        index.train(sample)
        set_search_params(index, settings.nprobe_choices[0], settings.k_factor)
    index.add_with_ids(base, base_ids)
    searcher = (
        RerankedIndex(index, fetch or memory_fetch(vectors, ids), settings.k_factor)
        if reranks_from_vault(plan)
        else index
    )

    recall_by_nprobe: dict[str, float] = {}
    recall, nprobe = 1.0, 0
    if len(queries):
        k = min(10, len(base))
        truth_positions = exact_neighbors(base, queries, k)
        truth = base_ids[truth_positions]
        if plan.kind == "flat":
            recall = recall_at(index.search(queries, k)[1], truth)
        else:
            # Cheapest (k_factor, probing) reaching the target, in order of cost; else the best
            # seen. Per-query probing first where it applies; lists too small for its margins (the
            # nearest centroid almost on the query) can leave it short: then one nprobe for all, as
            # other indexes do.
            families = [
                [
                    (f"nprobe={p}", {"nprobe": p, "probe_margin": None, "max_probes": 0})
                    for p in settings.nprobe_choices
                    if p <= plan.nlist
                ]
            ]
            if isinstance(searcher, RerankedIndex):
                max_probes = max(1, int(plan.nlist * settings.max_probe_share))
                families.insert(
                    0,
                    [
                        (
                            f"margin={m:g}",
                            {"nprobe": None, "probe_margin": m, "max_probes": max_probes},
                        )
                        for m in settings.probe_margin_choices
                    ],
                )
            best = (-1.0, families[0][0][1], settings.k_factor_choices[0])
            for probings in families:
                best = max(
                    best,
                    _cheapest(searcher, probings, settings, queries, truth, k, recall_by_nprobe),
                    key=lambda found: found[0],
                )
                if best[0] >= settings.target_recall:
                    break
            recall, probing, k_factor = best
            set_search_params(searcher, k_factor=k_factor, **probing)
            nprobe = int(probing["nprobe"] or probing["max_probes"])
    if len(held):
        index.add_with_ids(vectors[held], ids[held])
    latency_queries = queries if len(queries) else vectors[: min(100, n)]
    p50, p99 = (
        single_query_latency(searcher, latency_queries[:200], k=min(10, n)) if n else (0.0, 0.0)
    )
    stats = BuildStats(
        plan=asdict(plan),
        vectors=n,
        dims=d,
        build_seconds=time.perf_counter() - started,
        recall_at_10=recall,
        nprobe=nprobe,
        queries=len(queries),
        p50_ms=p50,
        p99_ms=p99,
        recall_by_nprobe=recall_by_nprobe,
        search=search_params(searcher),
    )
    return index, stats
