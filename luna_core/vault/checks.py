"""Health of a vault store: the catalog and Zarr agree, and the committed rows are sane numbers.

Scanning a 500k-row conditioning store in full at every run would read tens of GB, so value checks
read the rows this run wrote plus a random sample of older rows; counts are checked in full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from luna_core.catalog.connection import open_catalog
from luna_core.errors import CorruptStoreError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile
from luna_core.vault.segments import (
    LOCAL_MASK,
    SEGMENT_BITS,
    Shard,
    open_store,
    read_manifests,
    shard_manifests,
    store_exists,
)
from luna_core.vault.store import TEXT_LAYOUT, VISION_LAYOUT, RowStore

SAMPLE_ROWS = 1024
UNIT_NORM_TOLERANCE = 0.01  # float16 storage of a unit vector


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)


def _rows_to_check(committed: np.ndarray, new_rows: tuple[int, int], seed: int = 0) -> np.ndarray:
    fresh = committed[(committed >= new_rows[0]) & (committed < new_rows[1])]
    older = committed[(committed < new_rows[0]) | (committed >= new_rows[1])]
    if len(older) > SAMPLE_ROWS:
        older = np.random.default_rng(seed).choice(older, SAMPLE_ROWS, replace=False)
    return np.sort(np.concatenate([fresh, older]))


def check_store(
    home: LunaHome,
    profile: ModelProfile,
    kind: str,
    new_rows: tuple[int, int] = (0, 0),
    shard: Shard | None = None,
) -> list[CheckOutcome]:
    """Checks of the profile's `kind` ("vision" or "text") store; values of `new_rows` are all read.
    With a `shard`, of its segment alone, counting the rows its manifests hold for the commit as
    committed."""
    vision = kind == "vision"
    table = "vision_rows" if vision else "text_rows"
    store_key, path = (
        (profile.vision_key, home.vision_store(profile))
        if vision
        else (profile.text_key, home.text_store(profile))
    )
    in_segment, of_shard = "", ""
    if shard is not None:
        in_segment = f' AND "row" BETWEEN {shard.first_row} AND {shard.first_row + LOCAL_MASK}'
        of_shard = " AND " + shard.sql("i.content_hash" if vision else "p.prompt_hash")
    waiting = read_manifests(shard_manifests(path, shard)) if shard is not None else None
    with open_catalog(home.catalog_path, read_only=shard is not None) as con:
        committed = np.array(
            [
                r
                for (r,) in con.execute(
                    f'SELECT "row" FROM {table} WHERE store_key = ?{in_segment} ORDER BY "row"',
                    [store_key],
                ).fetchall()
            ],
            dtype=np.int64,
        )
        # Rows of items that left the library still occupy their place in the arrays.
        retired = np.array(
            [
                r
                for (r,) in con.execute(
                    f'SELECT "row" FROM retired_rows WHERE store_key = ?{in_segment}', [store_key]
                ).fetchall()
            ],
            dtype=np.int64,
        )
        if kind == "vision":
            uncovered_sql = f"""
                SELECT DISTINCT i.content_hash FROM images i WHERE i.status = 'ok'
                  AND NOT EXISTS (SELECT 1 FROM vision_rows v WHERE v.store_key = $k AND
                      v.content_hash = i.content_hash)
                  AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $k AND
                      f.item_key = i.content_hash)
                  {of_shard}"""
        else:
            uncovered_sql = f"""
                SELECT p.prompt_hash FROM prompts p
                WHERE NOT EXISTS (SELECT 1 FROM text_rows t WHERE t.store_key = $k AND t.prompt_hash
                    = p.prompt_hash)
                  AND NOT EXISTS (SELECT 1 FROM embedding_failures f WHERE f.store_key = $k AND
                      f.item_key = p.prompt_hash)
                  {of_shard}"""
        uncovered_keys = {key for (key,) in con.execute(uncovered_sql, {"k": store_key}).fetchall()}
    if waiting is not None:  # rows and failures the shard wrote, not committed yet
        uncovered_keys -= set(waiting.column("key").to_pylist())
        waiting_rows = np.array(
            [r for r in waiting.column("row").to_pylist() if r is not None], dtype=np.int64
        )
        committed = np.sort(np.concatenate([committed, waiting_rows]))
    uncovered = len(uncovered_keys)
    # every declared check answers, or Dagster refuses the materialization
    if not store_exists(path):
        empty = len(committed) == 0
        return [
            CheckOutcome(
                "counts_agree",
                empty and uncovered == 0,
                f"no store at {path}; {len(committed)} committed rows, {uncovered} items without "
                "a row",
            ),
            CheckOutcome("no_nan_or_inf", empty, "no store: no rows to read"),
            CheckOutcome("norms_sane", empty, "no store: no rows to read"),
        ]
    store = open_store(path, VISION_LAYOUT if vision else TEXT_LAYOUT)
    shapes = store.fields
    distinct = len(np.unique(committed))
    # Each segment (the base store is segment 0) numbers its rows from 0, contiguously, inside its
    # arrays.
    allocated = np.sort(np.concatenate([committed, retired]))
    contiguous, inside, capacity = True, True, 0
    for segment_id in np.unique(allocated >> SEGMENT_BITS):
        local = allocated[(allocated >> SEGMENT_BITS) == segment_id] & LOCAL_MASK
        part = (
            store
            if isinstance(store, RowStore)
            else (store.base if segment_id == 0 else store.segments.get(int(segment_id)))
        )
        part_capacity = part.capacity if part is not None else 0
        capacity += part_capacity
        contiguous &= bool(
            local[0] == 0 and local[-1] == len(local) - 1 and len(np.unique(local)) == len(local)
        )
        inside &= bool(local[-1] < part_capacity)
    counts_ok = distinct == len(committed) and contiguous and inside and uncovered == 0
    outcomes = [
        CheckOutcome(
            "counts_agree",
            bool(counts_ok),
            "every item has exactly one committed row; committed and retired rows are contiguous "
            "and inside the Zarr arrays",
            {
                "committed rows": int(len(committed)),
                "distinct rows": int(distinct),
                "retired rows": int(len(retired)),
                "zarr capacity": int(capacity),
                "items without row or failure": int(uncovered),
            },
        )
    ]
    # Rows the catalog claims past the arrays' end are a counts_agree failure, not something to
    # read.
    rows = _rows_to_check(committed if inside else committed[committed < store.capacity], new_rows)
    bad_values = 0
    bad_norms = 0
    damaged: list[str] = []
    for name in shapes:
        try:
            values = store.read(name, rows).astype(np.float32)
        except CorruptStoreError as exc:  # a checksum mismatch fails the value checks, by name
            damaged.append(str(exc))
            continue
        flat = values.reshape(len(rows), -1)
        finite = np.isfinite(flat).all(axis=1)
        bad_values += int((~finite).sum())
        if kind == "vision":
            norms = np.linalg.norm(flat, axis=1)
            bad_norms += int((np.abs(norms - 1) > UNIT_NORM_TOLERANCE).sum())
        elif name == "prompt_embeds":
            token_norms = np.linalg.norm(values, axis=-1)  # a never-written row reads as zeros
            bad_norms += int((token_norms.min(axis=1) <= 0).sum())
        else:
            bad_norms += int((np.linalg.norm(flat, axis=1) <= 0).sum())
    outcomes.append(
        CheckOutcome(
            "no_nan_or_inf",
            bad_values == 0 and not damaged,
            "; ".join(damaged) or "no NaN or inf in the rows read (checksums verified)",
            {
                "rows read": int(len(rows)),
                "rows with NaN/inf": bad_values,
                "damaged arrays": len(damaged),
            },
        )
    )
    norm_rule = "unit length (±0.01)" if kind == "vision" else "no all-zero token or pooled vector"
    outcomes.append(
        CheckOutcome(
            "norms_sane",
            bad_norms == 0 and not damaged,
            f"every row read has {norm_rule}",
            {"rows read": int(len(rows)), "rows failing": bad_norms},
        )
    )
    return outcomes
