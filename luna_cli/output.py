"""What the CLI prints: aligned tables and the summaries of a home (catalog, vault, index)."""

from __future__ import annotations

import json
import os

from luna_core.catalog import connection as catalog
from luna_core.home.home import LunaHome
from luna_core.index.store import IndexStore
from luna_core.vault.segments import pending_manifests, store_bytes


def print_table(rows: list[dict], columns: list[str], widths: dict[str, int] | None = None) -> None:
    widths = widths or {}

    def fit(value, width):
        text = "" if value is None else str(value).replace("\n", " ")
        return text if len(text) <= width else text[: width - 1] + "…"

    sizes = {
        c: min(
            widths.get(c, 60), max([len(c)] + [len(fit(r.get(c), widths.get(c, 60))) for r in rows])
        )
        for c in columns
    }
    print("  " + "  ".join(c.ljust(sizes[c]) for c in columns))
    for row in rows:
        print("  " + "  ".join(fit(row.get(c), sizes[c]).ljust(sizes[c]) for c in columns))


def print_neighbors(neighbors, home: LunaHome | None = None) -> None:
    rows = [
        {
            "similarity": f"{n.similarity:.3f}",
            "weight": f"{n.weight:.2f}",
            "generator": n.generator,
            "prompt": n.prompt,
            "path": os.path.relpath(n.path, home.root) if home else n.path,
        }
        for n in neighbors
    ]
    print_table(
        rows, ["similarity", "weight", "generator", "prompt", "path"], {"prompt": 60, "path": 50}
    )


def print_catalog_summary(home: LunaHome) -> None:
    with catalog.open_catalog(home.catalog_path, read_only=True) as con:
        counts = catalog.image_counts(con)
        by_generator = catalog.images_by_generator(con)
        quarantined = catalog.quarantine_rows(con, 30)
    print(
        f"\nCatalog: {counts.get('ok', 0)} image files ({counts['unique']} unique by content), "
        f"{counts.get('missing', 0)} missing, {counts['quarantine']} quarantined"
    )
    print_table(by_generator, ["generator", "images", "prompts"])
    if quarantined:
        print("\nQuarantined (nothing is dropped: each file with its reason):")
        rows = [{**q, "path": os.path.relpath(q["path"], home.root)} for q in quarantined]
        print_table(rows, ["reason", "path", "detail"], {"path": 44, "detail": 70})


def print_vault_summary(home: LunaHome) -> None:
    with catalog.open_catalog(home.catalog_path, read_only=True) as con:
        stores = catalog.vault_stores(con)
    if not stores:
        return
    print("\nVault (Zarr, float16):")
    rows = []
    for store in stores:
        shape_text = ", ".join(f"{k} {list(v)}" for k, v in json.loads(store["shapes"]).items())
        location = home.recorded_store(store["path"])
        waiting = len(pending_manifests(location))
        notes = (
            (
                f"{store['chunked']} prompts over one chunk of 77 tokens"
                if store.get("chunked")
                else ""
            )
            + (f" {store['truncated']} cut at 77 (literal)" if store["truncated"] else "")
            + (f" {store['failed']} failed" if store["failed"] else "")
            + (f" {waiting} shard manifest(s) wait for luna_catalog's commit" if waiting else "")
        )
        rows.append(
            {
                "store": store["kind"],
                "rows": store["rows"],
                "shape per row": shape_text,
                "MB": f"{store_bytes(location) / 1e6:.2f}",
                "notes": notes,
            }
        )
    print_table(rows, ["store", "rows", "shape per row", "MB", "notes"], {"shape per row": 60})


def print_index_summary(home: LunaHome) -> None:
    for pointer in sorted(home.index_root.glob("*/current.json")):
        version = IndexStore(pointer.parent).current()
        meta = version.meta()
        plan = meta.get("plan", {})
        size_mb = (meta.get("index_bytes", 0) + meta.get("lookup_bytes", 0)) / 1e6
        print(
            f"\nIndex {pointer.parent.name} v{version.number}: {meta.get('vectors', 0):,} images, "
            f"{plan.get('factory', '?')}, recall@10 {float(meta.get('recall_at_10', 0)):.3f} on "
            "held-out vectors, "
            f"p50 {float(meta.get('p50_ms', 0)):.2f} ms, {size_mb:.2f} MB"
        )


def print_home_summary(home: LunaHome) -> None:
    print_catalog_summary(home)
    print_vault_summary(home)
    print_index_summary(home)
