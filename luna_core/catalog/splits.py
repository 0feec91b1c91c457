"""Train/val/test membership: decided once per image, stored, never moved; near-duplicates share a
split.

An image's split is chosen the first time the catalog sees it and is kept for as long as the catalog
lives (an image that leaves and comes back keeps it). The rule, in content-hash order:

1. an image with a near-duplicate that already has a split joins that split (the most similar one);
2. otherwise its percent bucket of the content hash decides (80 / 10 / 10): deterministic, uniform.

Two images are near-duplicates when their vision embeddings have a cosine of at least the profile's
`near_duplicate_cosine` (resized, re-encoded or lightly edited copies of one picture), or when they
share both prompt and seed (one generation saved twice). Every link found is stored in
`near_duplicates`, so the report's leave-one-out can leave an image's twins out too, and can name
test images whose twin sits in train (a catalog from before this rule may hold such pairs).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import faiss
import numpy as np

from luna_core.catalog.connection import HELD_IMAGES

log = logging.getLogger(__name__)

SPLIT_PERCENT = {"train": 80, "val": 10, "test": 10}
# Past this many (new x compared) products the vision comparison goes through a FAISS IVF k-NN
# search instead of blockwise exact products (a first build of a large library).
EXACT_PRODUCTS = 4_000_000_000
APPROX_NEIGHBOURS = 16
# A typical picture of a real library has no near-duplicate (a few have one or two: a resize, a
# re-encode). When the median picture has this many, the embeddings do not tell pictures apart
# (random weights: every cosine near 1), and linking by them would chain the library into one split.
IMPLAUSIBLE_TWINS = 3
TWIN_SAMPLE = (512, 4096)  # pictures counted, pictures they are counted against
BLOCK_ENTRIES = 32_000_000  # similarities held at once in the exact path (128 MB of float32)


@dataclass
class SplitReport:
    # how new images got their split -> count
    assigned: dict[str, int] = field(default_factory=dict)
    scanned: int = 0  # images compared with the library for near-duplicates in this build
    links: dict[str, int] = field(default_factory=dict)  # new near-duplicate links by kind
    threshold: float = 0.0
    # why the vision embeddings were not used to link near-duplicates ("" when they were)
    vision_unsure: str = ""


def hash_split(content_hash: str) -> str:
    """The percent bucket of the content hash's first 32 bits."""
    bucket = int(content_hash[:8], 16) % 100
    if bucket < SPLIT_PERCENT["train"]:
        return "train"
    return "val" if bucket < SPLIT_PERCENT["train"] + SPLIT_PERCENT["val"] else "test"


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def similar_pairs(
    new: np.ndarray, known: np.ndarray, threshold: float
) -> list[tuple[int, int, float]]:
    """Pairs (i of `new`, j of the concatenation new + known, cosine) with cosine >= threshold, i !=
    j. Exact in blocks while the products stay bounded; a FAISS IVF k-NN search past that."""
    base = np.concatenate([new, known]) if len(known) else new
    if len(new) == 0 or len(base) < 2:
        return []
    pairs = []
    if len(new) * len(base) <= EXACT_PRODUCTS:
        block = max(1, min(len(new), BLOCK_ENTRIES // len(base)))
        for start in range(0, len(new), block):
            sims = new[start : start + block] @ base.T
            rows, cols = np.nonzero(sims >= threshold)
            pairs += [
                (int(start + r), int(c), float(sims[r, c]))
                for r, c in zip(rows, cols)
                if start + r != c
            ]
        return pairs

    nlist = int(4 * np.sqrt(len(base)))
    quantizer = faiss.IndexFlatIP(base.shape[1])
    index = faiss.IndexIVFFlat(quantizer, base.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(
        base[np.random.default_rng(0).choice(len(base), min(len(base), nlist * 64), replace=False)]
    )
    index.add(base)
    index.nprobe = 8
    sims, neighbours = index.search(new, APPROX_NEIGHBOURS)
    for i in range(len(new)):
        pairs += [
            (i, int(j), float(s))
            for s, j in zip(sims[i], neighbours[i])
            if j >= 0 and j != i and s >= threshold
        ]
    return pairs


def typical_twins(vectors: np.ndarray, threshold: float) -> float:
    """The median picture's count of others at or above `threshold`, estimated from a seeded
    sample (exact up to 4,096 pictures)."""
    count = len(vectors)
    if count < 2:
        return 0.0
    rng = np.random.default_rng(0)
    rows = rng.choice(count, min(count, TWIN_SAMPLE[0]), replace=False)
    pool = rng.choice(count, min(count, TWIN_SAMPLE[1]), replace=False)
    above = (vectors[rows] @ vectors[pool].T >= threshold).sum(axis=1)
    above = above - np.isin(rows, pool)  # a picture is not its own twin
    return float(np.median(above)) * (count - 1) / max(1, len(pool) - np.isin(rows, pool).mean())


def _vision_links(
    con, vision, store_key: str, threshold: float, report: SplitReport
) -> tuple[list[str], list[tuple]]:
    """Content hashes not yet compared in this vision store, and their links to every compared
    image (none, with the reason in `report`, when the embeddings do not tell pictures apart)."""
    held = f"content_hash IN ({HELD_IMAGES})"
    new = con.execute(
        f"""
        SELECT v.content_hash, v."row" FROM vision_rows v
        WHERE v.store_key = ? AND {held}
          AND NOT EXISTS (SELECT 1 FROM twin_scans t WHERE t.store_key = v.store_key AND
              t.content_hash = v.content_hash)
        ORDER BY v.content_hash""",
        [store_key],
    ).fetchall()
    if not new or vision is None:
        return [h for h, _ in new], []
    known = con.execute(
        f"""
        SELECT v.content_hash, v."row" FROM vision_rows v JOIN twin_scans t USING (store_key,
            content_hash)
        WHERE v.store_key = ? AND {held} ORDER BY v.content_hash""",
        [store_key],
    ).fetchall()
    hashes = [h for h, _ in new] + [h for h, _ in known]

    def read(rows) -> np.ndarray:
        rows = np.array([r for _, r in rows], dtype=np.int64)
        out = np.empty((len(rows), vision.fields["embeds"][0]), dtype=np.float32)
        # bounded reads: float16 → float32 a slice at a time
        for start in range(0, len(rows), 65536):
            out[start : start + 65536] = vision.read("embeds", rows[start : start + 65536])
        return _unit(out)

    new_vectors = read(new)
    known_vectors = read(known) if known else np.empty((0, new_vectors.shape[1]), np.float32)
    twins = typical_twins(np.concatenate([new_vectors, known_vectors]), threshold)
    if twins >= IMPLAUSIBLE_TWINS:
        report.vision_unsure = (
            f"the typical picture has {twins:.0f} others at the near-duplicate cosine {threshold}: "
            "these embeddings do not tell pictures apart, so no image is linked by them"
        )
        log.warning("near-duplicates: %s", report.vision_unsure)
        return [h for h, _ in new], []
    links = []
    for i, j, cosine in similar_pairs(new_vectors, known_vectors, threshold):
        a, b = hashes[i], hashes[j]
        if j < len(new) and b < a:
            continue  # a pair of two new images is found from both ends: keep one
        links.append((a, b, "vision", round(cosine, 6)))
    return [h for h, _ in new], links


def assign_splits(con, vision, store_key: str, threshold: float) -> SplitReport:
    """Find near-duplicates of the images not yet compared, store the links, and give every image
    without a split its split (see the module's rule). Call inside a catalog transaction."""
    report = SplitReport(threshold=threshold)
    scanned, links = _vision_links(con, vision, store_key, threshold, report)
    # One generation saved twice (same prompt and seed), whatever the pixels: among images without a
    # split.
    links += con.execute(f"""
        SELECT a.content_hash, b.content_hash, 'prompt and seed', NULL
        FROM generations a JOIN generations b
          ON a.prompt = b.prompt AND a.seed = b.seed AND a.content_hash <> b.content_hash
        WHERE a.seed IS NOT NULL AND a.prompt IS NOT NULL AND a.content_hash IN ({HELD_IMAGES})
          AND b.content_hash IN ({HELD_IMAGES})
          AND NOT EXISTS (SELECT 1 FROM splits s WHERE s.content_hash = a.content_hash)
          AND (a.content_hash < b.content_hash
               OR EXISTS (SELECT 1 FROM splits s WHERE s.content_hash =
                   b.content_hash))""").fetchall()
    if links:
        con.executemany(
            """INSERT OR IGNORE INTO near_duplicates VALUES (?, ?, ?, ?, now())""", links
        )
    if scanned:
        con.executemany(
            "INSERT OR IGNORE INTO twin_scans VALUES (?, ?, now())",
            [(store_key, h) for h in scanned],
        )
    report.scanned = len(scanned)
    for _, _, kind, _ in links:
        report.links[kind] = report.links.get(kind, 0) + 1

    unassigned = [
        h
        for (h,) in con.execute("""
        SELECT content_hash FROM image_ids i
        WHERE NOT EXISTS (SELECT 1 FROM splits s WHERE s.content_hash = i.content_hash)
        ORDER BY content_hash""").fetchall()
    ]
    if not unassigned:
        return report
    # hash -> (similarity, twin, kind)
    twins: dict[str, list[tuple[float, str, str]]] = defaultdict(list)
    pending = set(unassigned)
    for a, b, kind, similarity in con.execute(
        """
            SELECT content_hash, twin_hash, kind, similarity FROM near_duplicates
            WHERE content_hash IN (SELECT unnest(?::VARCHAR[])) OR twin_hash IN (SELECT
                unnest(?::VARCHAR[]))""",
        [unassigned, unassigned],
    ).fetchall():
        # the same generation: the strongest link
        strength = 1.0 if similarity is None else float(similarity)
        twins[a].append((strength, b, kind))
        twins[b].append((strength, a, kind))
    split_of = dict(
        con.execute(
            """
        SELECT content_hash, split FROM splits
        WHERE content_hash IN (SELECT twin FROM (SELECT unnest(?::VARCHAR[]) AS twin))""",
            [sorted({t for h in pending for _, t, _ in twins.get(h, [])})],
        ).fetchall()
    )
    rows = []
    for content_hash in unassigned:  # content-hash order: the same library gives the same splits
        placed = sorted(
            ((s, t, k) for s, t, k in twins.get(content_hash, []) if t in split_of), reverse=True
        )
        if placed:
            similarity, twin, kind = placed[0]
            split = split_of[twin]
            reason = (
                f"same prompt and seed as {twin[:12]}"
                if kind == "prompt and seed"
                else f"near-duplicate of {twin[:12]} (cosine {similarity:.4f})"
            )
            report.assigned[f"with a near-duplicate ({kind})"] = (
                report.assigned.get(f"with a near-duplicate ({kind})", 0) + 1
            )
        else:
            split, reason = hash_split(content_hash), "content-hash bucket"
            report.assigned["content-hash bucket"] = (
                report.assigned.get("content-hash bucket", 0) + 1
            )
        split_of[content_hash] = split
        rows.append((content_hash, split, reason))
    con.executemany(
        "INSERT INTO splits (content_hash, split, assigned_at, reason) VALUES (?, ?, now(), ?)",
        rows,
    )
    return report


def twins_of(con, content_hashes: list[str]) -> dict[str, set[str]]:
    """Every stored near-duplicate of each given image (both directions of a link)."""
    out: dict[str, set[str]] = defaultdict(set)
    if not content_hashes:
        return out
    for a, b in con.execute(
        """
            SELECT content_hash, twin_hash FROM near_duplicates
            WHERE content_hash IN (SELECT unnest(?::VARCHAR[])) OR twin_hash IN (SELECT
                unnest(?::VARCHAR[]))""",
        [content_hashes, content_hashes],
    ).fetchall():
        out[a].add(b)
        out[b].add(a)
    return out
