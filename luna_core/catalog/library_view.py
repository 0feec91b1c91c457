"""The library view of the catalog: one row per image joining generation, vision row and
conditioning rows, with a stable integer id and a stable train/val/test split per content hash.

Ids and splits are assigned once and never changed: the FAISS index uses the ids, the projector's
evaluation depends on the split staying put as the library grows. How a split is chosen
(near-duplicates share one) is luna_core.catalog.splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from luna_core.catalog.connection import HELD_IMAGES, HELD_PROMPTS, open_catalog, transaction
from luna_core.catalog.schema import conditioning_key_sql
from luna_core.catalog.splits import SplitReport, assign_splits
from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile
from luna_core.prompts.syntax import ZERO_EMPTY_NEGATIVE_SQL
from luna_core.vault.segments import open_vision_store, store_exists


@dataclass
class LibraryReport:
    images: int = 0
    new_ids: int = 0
    by_split: dict[str, int] = field(default_factory=dict)
    with_vision_row: int = 0
    with_prompt_row: int = 0
    with_negative_row: int = 0
    orphans: dict[str, int] = field(default_factory=dict)
    retired: dict[str, int] = field(default_factory=dict)  # left the library since the last build
    uncounted: int = 0  # ok images missing from the view, or in it twice (must be 0)
    # what the view holds for the profile (ids, paths, splits, rows): the asset's data version
    digest: str = ""
    # how this build's new images got their split
    splits: SplitReport = field(default_factory=SplitReport)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def retire_departed(con) -> dict[str, int]:
    """Retire what no library file holds any more (a file deleted, or edited in place): its
    generation, its vision rows and the text rows of prompts no generation uses. Vault rows move
    to retired_rows, so their Zarr rows are never handed out again and come back if the content
    does. Ids and splits stay: a returning image keeps both. Call inside a transaction."""
    retired = {
        "generations": len(
            con.execute(
                f"DELETE FROM generations WHERE content_hash NOT IN ({HELD_IMAGES}) RETURNING 1"
            ).fetchall()
        )
    }
    for kind, table, key, held in (
        ("vision", "vision_rows", "content_hash", HELD_IMAGES),
        ("text", "text_rows", "prompt_hash", HELD_PROMPTS),
    ):
        extra = (
            "token_count, truncated, now(), chunks" if kind == "text" else "NULL, NULL, now(), NULL"
        )
        # A conditioning's chunk rows 2.. (KEY#1, KEY#2...) go with it.
        item = f"split_part({key}, '#', 1)" if kind == "text" else key
        con.execute(f"""
            INSERT OR REPLACE INTO retired_rows (store_key, kind, item_key, "row", token_count,
                truncated, retired_at, chunks)
            SELECT store_key, '{kind}', {key}, "row", {extra} FROM {table} WHERE {item} NOT IN
                ({held})""")
        retired[f"{kind} rows"] = len(
            con.execute(f"DELETE FROM {table} WHERE {item} NOT IN ({held}) RETURNING 1").fetchall()
        )
    return retired


def build_library(home: LunaHome, profile: ModelProfile) -> LibraryReport:
    """Assign ids and splits to new content hashes and (re)create the `library` view for the
    profile's stores."""

    vision_key, text_key = profile.vision_key, profile.text_key
    vision = open_vision_store(home, profile) if store_exists(home.vision_store(profile)) else None
    report = LibraryReport()
    with open_catalog(home.catalog_path) as con:
        with transaction(con):
            report.retired = retire_departed(con)
            report.new_ids = len(
                con.execute("""
                INSERT INTO image_ids
                SELECT content_hash,
                       (SELECT coalesce(max(image_id), 0) FROM image_ids) + row_number() OVER (ORDER
                           BY content_hash),
                       now()
                FROM (SELECT DISTINCT content_hash FROM images WHERE status = 'ok') n
                WHERE NOT EXISTS (SELECT 1 FROM image_ids i WHERE i.content_hash = n.content_hash)
                RETURNING image_id""").fetchall()
            )
            report.splits = assign_splits(con, vision, vision_key, profile.near_duplicate_cosine)
            # A1111 gives an empty negative zeros on SDXL (force_zero_negative_prompt): no row,
            # zeros as every absent negative; ComfyUI and Fooocus encode "", which has its row.
            negative = (
                "CASE WHEN g.negative_prompt = '' AND g.prompt_syntax IN "
                f"({ZERO_EMPTY_NEGATIVE_SQL}) THEN NULL ELSE g.negative_prompt END"
            )
            con.execute(f"""
                CREATE OR REPLACE VIEW library AS
                WITH paths AS (
                    SELECT content_hash, min(path) AS path, count(*) AS copies, max(mtime_ns) AS
                        mtime_ns
                    FROM images WHERE status = 'ok' GROUP BY content_hash
                )
                SELECT ids.image_id, p.content_hash, p.path, p.copies, s.split,
                       g.generator, g.prompt, g.negative_prompt, g.seed, g.model,
                       g.loras, g.sampler, g.scheduler, g.steps, g.cfg_scale, p.mtime_ns,
                       -- A1111 and Forge write each LoRA's hash ("name: hash, ..."): refinement
                       -- finds files by it
                       json_extract_string(g.extra, '$."Lora hashes"') AS lora_hashes,
                       v."row" AS vision_row,
                       {conditioning_key_sql("g.prompt", "g.prompt_syntax")} AS prompt_hash,
                           tp."row" AS prompt_row,
                       tp.token_count AS prompt_tokens, tp.truncated AS prompt_truncated, tp.chunks
                           AS prompt_chunks,
                       g.prompt_syntax,
                       {conditioning_key_sql(negative, "g.prompt_syntax")} AS negative_hash,
                       tn."row" AS negative_row, tn.chunks AS negative_chunks,
                       {_quote(vision_key)} AS vision_store, {_quote(text_key)} AS text_store
                FROM paths p
                JOIN image_ids ids USING (content_hash)
                JOIN splits s USING (content_hash)
                LEFT JOIN generations g USING (content_hash)
                LEFT JOIN vision_rows v ON v.content_hash = p.content_hash AND v.store_key =
                    {_quote(vision_key)}
                LEFT JOIN text_rows tp ON tp.prompt_hash =
                    {conditioning_key_sql("g.prompt", "g.prompt_syntax")}
                                      AND tp.store_key = {_quote(text_key)}
                LEFT JOIN text_rows tn ON tn.prompt_hash =
                    {conditioning_key_sql(negative, "g.prompt_syntax")}
                                      AND tn.store_key = {_quote(text_key)}""")

        report.images = con.execute(
            "SELECT count(DISTINCT content_hash) FROM images WHERE status = 'ok'"
        ).fetchone()[0]
        report.by_split = dict(
            con.execute("SELECT split, count(*) FROM library GROUP BY 1 ORDER BY 1").fetchall()
        )
        (
            report.with_vision_row,
            report.with_prompt_row,
            report.with_negative_row,
            in_view,
            distinct,
        ) = con.execute(
            "SELECT count(vision_row), count(prompt_row), count(negative_row), count(*), "
            "count(DISTINCT content_hash) "
            "FROM library"
        ).fetchone()
        report.uncounted = abs(in_view - report.images) + (in_view - distinct)
        report.orphans = {
            "vision rows of unknown images": con.execute(
                "SELECT count(*) FROM vision_rows v ANTI JOIN images i USING (content_hash)"
            ).fetchone()[0],
            "text rows of unused prompts": con.execute(
                "SELECT count(*) FROM text_rows t ANTI JOIN prompts p ON p.prompt_hash = "
                "split_part(t.prompt_hash, '#', 1)"
            ).fetchone()[0],
            "generations without an image": con.execute(
                "SELECT count(*) FROM generations g ANTI JOIN images i USING (content_hash)"
            ).fetchone()[0],
        }
        report.digest = con.execute("""
            SELECT coalesce(md5(string_agg(concat_ws('|', image_id, content_hash, path, split,
                vision_row, prompt_row,
                                                     negative_row, vision_store, text_store), '\n'
                                                         ORDER BY image_id)), '')
            FROM library""").fetchone()[0]
    return report


def library_paths(home: LunaHome, where: str, limit: int = 16) -> list[str]:
    """Paths of library images matching an SQL condition over the `library` view (e.g. `prompt ILIKE
    '%portrait%'`), on a sandboxed read-only connection: the condition can read, never write."""

    if limit < 1:
        raise LunaConfigError(f"limit must be at least 1 (got {limit})")
    with open_catalog(home.catalog_path, sandboxed=True) as con:
        try:
            rows = con.execute(
                f"SELECT path FROM library WHERE ({where}) ORDER BY image_id LIMIT ?", [limit]
            ).fetchall()
        except duckdb.Error as exc:
            raise LunaConfigError(
                f"condition {where!r} is not a condition over the library view: "
                f"{str(exc).splitlines()[0]}"
            ) from None
    return [path for (path,) in rows]
