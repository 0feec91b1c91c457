"""FAISS index benchmark on synthetic clustered unit vectors, printed side by side in one run.

    .venv/bin/python benchmarks/bench_index.py --vectors 500000 --dims 1024 --seed 0,7,42
    --skip-flat

Data: a mixture of a few thousand clusters with power-law sizes, unit-normalized; queries are held
out (never added). The vectors are rounded to float16 as the vault stores them: the index is built
from those rows and recall is measured against exact search over them (as the build's own tuning
does); recall against the float32 originals is printed beside it. Prints, for the index Luna
chooses and for the exact flat scan: recall@10, single-query p50/p99 latency at 1 and 2 threads,
batch throughput, build time and size; then the time of an incremental add of 1 % new vectors
against a full rebuild, and the vault query latency (query embedding in → similarity-weighted mean
conditioning of k=5 out, read from Zarr). The vectors are also written to a vault store (Zarr,
float16, the vision layout): an index that re-ranks from the vault reads its candidates' rows there,
as queries do, and its resident memory is measured (RSS growth when the serialized index is
loaded). Several seeds (`--seed 0,7,42`) end with a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from luna_core.index.faiss_index import (
    GIB,
    IndexSettings,
    build_index,
    exact_neighbors,
    omp_threads,
    plan_index,
    recall_at,
    reranks_from_vault,
    searcher_for,
    single_query_latency,
)
from luna_core.index.store import vault_fetch


def clustered_vectors(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` random centres with power-law sizes and isotropic spread
    (relative noise 0.2-0.5 per cluster, cosine to the centre ~0.8-0.96)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    sizes = rng.pareto(1.2, clusters) + 1  # power-law cluster sizes
    assignment = rng.choice(clusters, size=n, p=sizes / sizes.sum())
    spread = rng.uniform(0.2, 0.5, clusters).astype(np.float32) / np.sqrt(d)
    x = centers[assignment] + spread[assignment, None] * rng.normal(size=(n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32, copy=False)


def resident_bytes(index) -> int:
    """Memory the index takes once loaded: RSS growth of a fresh process reading it (an allocator
    that reuses this process's freed memory would hide it here)."""
    import subprocess

    import faiss

    raw = index.index if hasattr(index, "fetch") else index
    with tempfile.NamedTemporaryFile(suffix=".faiss") as fh:
        faiss.write_index(raw, fh.name)
        script = (
            "import faiss, os, sys\n"
            "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * "
            "os.sysconf('SC_PAGE_SIZE')\n"
            "before = rss(); index = faiss.read_index(sys.argv[1]); print(rss() - before)"
        )
        return int(
            subprocess.run(
                [sys.executable, "-c", script, fh.name], capture_output=True, text=True, check=True
            ).stdout
        )


def vault_store(vectors: np.ndarray) -> tuple[object, Path]:
    """The vectors as a vision store of the vault (float16, Luna's layout), opened for reading."""
    from luna_core.vault.store import VISION_LAYOUT, RowStore

    work = Path(tempfile.mkdtemp(prefix="luna-bench-vision-"))
    store = RowStore.open(work / "vision.zarr", {"embeds": (vectors.shape[1],)}, VISION_LAYOUT)
    step = VISION_LAYOUT.rows_per_shard * 16
    for start in range(0, len(vectors), step):
        store.write(start, {"embeds": vectors[start : start + step].astype(np.float16)})
    return RowStore.open_readonly(work / "vision.zarr", VISION_LAYOUT), work


def index_bytes(index) -> int:
    import faiss

    return len(faiss.serialize_index(index.index if hasattr(index, "fetch") else index))


def measure(
    name: str,
    index,
    queries: np.ndarray,
    truth: np.ndarray,
    build_s: float,
    truth_original: np.ndarray | None = None,
) -> dict:
    import faiss

    found = index.search(queries, 10)[1]
    p50_1, p99_1 = single_query_latency(index, queries[:300], threads=1)
    p50_2, p99_2 = single_query_latency(index, queries[:300], threads=2)
    started = time.perf_counter()
    index.search(queries, 10)
    batch_qps = len(queries) / (time.perf_counter() - started)
    row = {
        "index": name,
        "recall@10": recall_at(found, truth),
        "p50_ms_1t": p50_1,
        "p99_ms_1t": p99_1,
        "p50_ms_2t": p50_2,
        "p99_ms_2t": p99_2,
        "batch_qps": batch_qps,
        "build_s": build_s,
        "size_MB": index_bytes(index) / 1e6,
        "omp_threads": faiss.omp_get_max_threads(),
    }
    if truth_original is not None:
        row["recall@10_vs_float32"] = recall_at(found, truth_original)
    against_original = (
        f" ({row['recall@10_vs_float32']:.4f} vs float32)" if truth_original is not None else ""
    )
    print(
        f"{name:44s} recall@10 {row['recall@10']:.4f}{against_original}  p50 {p50_1:7.3f} ms "
        f"(1t) {p50_2:7.3f} ms (2t)  "
        f"p99 {p99_1:7.3f}/{p99_2:7.3f} ms  batch {batch_qps:9,.0f} q/s  build {build_s:6.1f}s  "
        f"{row['size_MB']:8.1f} MB",
        flush=True,
    )
    return row


def vault_query_latency(
    vectors: np.ndarray,
    index,
    rows: int,
    k: int = 5,
    seq: int = 77,
    width: int = 2048,
    pooled: int = 1280,
    queries: int = 200,
) -> dict:
    """Embedding in → k neighbours → their conditioning rows read from a Zarr text store →
    weighted mean."""
    from luna_core.ask.answers import weighted_sum
    from luna_core.home.storage import tree_bytes
    from luna_core.vault.store import TEXT_LAYOUT, RowStore

    work = Path(tempfile.mkdtemp(prefix="luna-bench-vault-q-"))
    store = RowStore.open(
        work / "text.zarr",
        {"prompt_embeds": (seq, width), "pooled_prompt_embeds": (pooled,)},
        TEXT_LAYOUT,
    )
    rng = np.random.default_rng(5)
    for start in range(0, rows, 64):
        n = min(64, rows - start)
        store.write(
            start,
            {
                "prompt_embeds": rng.standard_normal((n, seq, width), dtype=np.float32).astype(
                    np.float16
                ),
                "pooled_prompt_embeds": rng.standard_normal((n, pooled), dtype=np.float32).astype(
                    np.float16
                ),
            },
        )
    # by image id; many images share a prompt row
    row_of_id = rng.integers(0, rows, size=int(index.ntotal) * 8 + 8)
    times = []
    for q in vectors[rng.choice(len(vectors), queries, replace=False)]:
        started = time.perf_counter()
        with omp_threads(1):  # as VaultQuery.nearest does
            sims, ids = index.search(q[None], k)
        weights = np.exp((sims[0] - sims[0].max()) / 0.05).astype(np.float32)
        weights /= weights.sum()
        picked = row_of_id[ids[0]]
        _ = (
            weighted_sum(weights, store.read_rows("prompt_embeds", picked)).reshape(seq, width),
            weighted_sum(weights, store.read_rows("pooled_prompt_embeds", picked)),
        )
        times.append((time.perf_counter() - started) * 1000)
    bytes_on_disk = tree_bytes(work)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    result = {
        "vault_query_p50_ms": float(np.percentile(times, 50)),
        "vault_query_p99_ms": float(np.percentile(times, 99)),
        "text_rows": rows,
        "text_store_GB": bytes_on_disk / 1e9,
    }
    print(
        f"vault query (k={k}, {rows:,} conditioning rows of [{seq},{width}]+[{pooled}] fp16 in "
        "Zarr, "
        f"{len(vectors):,} indexed vectors): p50 {result['vault_query_p50_ms']:.2f} ms, "
        f"p99 {result['vault_query_p99_ms']:.2f} ms",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vectors", type=int, default=500_000)
    parser.add_argument("--dims", type=int, default=1024)
    parser.add_argument("--clusters", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", default="0", help="generator seed(s), comma-separated: 0,7,42")
    parser.add_argument("--budget-gb", type=float, default=4.0)
    parser.add_argument(
        "--text-rows", type=int, default=4096, help="conditioning rows for the vault query figure"
    )
    parser.add_argument("--skip-flat", action="store_true")
    parser.add_argument(
        "--skip-extras", action="store_true", help="no incremental-add and vault-query figures"
    )
    parser.add_argument(
        "--project", type=int, default=5_000_000, help="library size the memory projection is for"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    results = [run_seed(args, int(seed)) for seed in args.seed.split(",")]
    if len(results) > 1:
        print(
            "\nseed  index                                  recall@10  (vs fp32)  p50 1t   p99 "
            "1t   p50 2t   RAM B/vector"
        )
        for r in results:
            row = r["rows"][-1]
            print(
                f"{r['seed']:<5} {row['index']:38s} {row['recall@10']:.4f}     "
                f"{row['recall@10_vs_float32']:.4f}     "
                f"{row['p50_ms_1t']:6.3f}   {row['p99_ms_1t']:6.3f}   {row['p50_ms_2t']:6.3f}   "
                f"{r['resident_bytes_per_vector']:,.0f}"
            )
    project = args.project
    per_vector = float(np.mean([r["resident_bytes_per_vector"] for r in results]))
    build_per_vector = float(np.mean([r["rows"][-1]["build_s"] for r in results])) / args.vectors
    print(
        f"\nprojection to {project:,} vectors at these per-vector costs: index resident "
        f"{per_vector * project / 1e9:.1f} GB; the vault's float16 rows "
        f"{args.dims * 2 * project / 1e9:.1f} GB on disk "
        "(read by re-ranking through the page cache); build about "
        f"{build_per_vector * project / 60:.0f} min "
        "(linear: an upper bound, training is a fixed cost)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


def run_seed(args, seed: int) -> dict:
    import shutil

    started = time.perf_counter()
    data = clustered_vectors(args.vectors + args.queries, args.dims, args.clusters, seed=seed)
    original, queries = data[: args.vectors], data[args.vectors :]
    # What Luna indexes is the vault's float16 rows (the build reads them there), so the truth is
    # exact search over those; recall against the float32 originals is printed beside it.
    base = original.astype(np.float16).astype(np.float32)
    ids = np.arange(1, args.vectors + 1, dtype=np.int64) * 7  # ids are catalog ids, not positions
    print(
        f"\nseed {seed}: {args.vectors:,} x {args.dims} clustered unit vectors ({args.clusters} "
        "clusters), "
        f"{args.queries} held-out queries; generated in {time.perf_counter() - started:.0f}s",
        flush=True,
    )
    truth = ids[exact_neighbors(base, queries, 10)]
    truth_original = ids[exact_neighbors(original, queries, 10)]
    del original, data
    print(
        "  the float16 rows themselves, searched exactly: recall@10 "
        f"{recall_at(truth, truth_original):.4f} "
        "against the float32 originals",
        flush=True,
    )
    settings = IndexSettings(memory_budget_bytes=int(args.budget_gb * GIB))
    plan = plan_index(args.vectors, args.dims, settings)
    print(
        f"Luna's choice for a {args.budget_gb:g} GB budget: {plan.factory} (estimated "
        f"{plan.estimated_bytes / 1e9:.2f} GB"
        + (", re-ranked from the vault's rows)" if reranks_from_vault(plan) else ")")
    )
    rows = []
    if not args.skip_flat:
        import faiss

        t0 = time.perf_counter()
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(args.dims))
        flat.add_with_ids(base, ids)
        rows.append(
            measure(
                "exact flat scan (reference)",
                flat,
                queries,
                truth,
                time.perf_counter() - t0,
                truth_original,
            )
        )
        del flat
    vision, work = vault_store(base)
    fetch = vault_fetch(vision, ids, np.arange(len(ids), dtype=np.int64))
    t0 = time.perf_counter()
    index, stats = build_index(
        base, ids, settings, log=lambda m: print("  " + m, flush=True), fetch=fetch
    )
    build_s = time.perf_counter() - t0
    searcher = searcher_for(index, {"plan": asdict(plan), "search_params": stats.search}, fetch)
    print(
        f"  tuned on {stats.queries} held-out vectors: recall@10 {stats.recall_at_10:.4f} at "
        f"{stats.search} "
        f"({len(stats.recall_by_nprobe)} settings tried)",
        flush=True,
    )
    if getattr(searcher, "probe_margin", None) is not None:
        depth = int(np.ceil(10 * searcher.k_factor))  # as a k=10 search asks
        probed = np.array([len(searcher.lists_for(q, depth)[0]) for q in queries])
        print(
            f"  lists probed per query (of {stats.plan['nlist']}): p50 {np.median(probed):.0f}, "
            f"p90 {np.percentile(probed, 90):.0f}, max {probed.max()}",
            flush=True,
        )
    rows.append(
        measure(
            f"Luna: {plan.factory}" + (" + vault" if reranks_from_vault(plan) else ""),
            searcher,
            queries,
            truth,
            build_s,
            truth_original,
        )
    )
    resident = resident_bytes(index)
    print(
        f"  index memory: {resident / args.vectors:,.0f} bytes a vector resident "
        f"({resident / 1e6:,.0f} MB; "
        f"serialized {index_bytes(index) / args.vectors:,.0f} B); the re-ranking copy is the "
        "vault on disk "
        + (
            "(read by queries)"
            if reranks_from_vault(plan)
            else "(not used: the copy is inside the index)"
        ),
        flush=True,
    )
    result = {
        "seed": seed,
        "rows": rows,
        "stats": stats.__dict__,
        "resident_bytes_per_vector": resident / args.vectors,
    }
    if not args.skip_extras:
        # Incremental add of 1 % new vectors vs a full rebuild of the grown set.
        extra = clustered_vectors(args.vectors // 100, args.dims, args.clusters, seed=seed)[
            : args.vectors // 100
        ]
        extra_ids = np.arange(args.vectors + 1, args.vectors + 1 + len(extra), dtype=np.int64) * 7
        t0 = time.perf_counter()
        index.add_with_ids(extra, extra_ids)
        add_s = time.perf_counter() - t0
        result["add"] = {
            "add_1pct_s": add_s,
            "rebuild_s": build_s,
            "rebuild_over_add": build_s / add_s,
        }
        print(
            f"incremental add of {len(extra):,} vectors (1 %): {add_s:.2f}s vs full rebuild "
            f"{build_s:.1f}s "
            f"-> add is {build_s / add_s:,.0f}x faster",
            flush=True,
        )
        result["vault"] = vault_query_latency(base, searcher, args.text_rows)
    shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
