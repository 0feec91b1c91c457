"""The catalog as the person who owns the library looks at it: an image's details, filters over
catalog fields, text search over prompts with pages, and the paths a page may open (only under a
library root). Read-only; every query is parameterized."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from luna_core.catalog.connection import open_catalog
from luna_core.errors import OutsideLibraryError, QueryError

MAX_PER_PAGE = 200
MAX_TEXT = 500  # characters of a text filter or query
DETAIL_COLUMNS = (
    "content_hash",
    "path",
    "generator",
    "prompt",
    "negative_prompt",
    "model",
    "loras",
    "sampler",
    "scheduler",
    "seed",
    "steps",
    "cfg_scale",
    "modified",
    "source",
)

# One row per image: its first path and its generation; `modified` is the file's mtime (when it was
# made).
_IMAGES = """
    SELECT i.content_hash, min(i.path) AS path, max(i.mtime_ns) AS mtime_ns,
           any_value(g.generator) AS generator, any_value(g.prompt) AS prompt,
           any_value(g.negative_prompt) AS negative_prompt, any_value(g.model) AS model,
           any_value(g.loras) AS loras, any_value(g.sampler) AS sampler, any_value(g.scheduler) AS
               scheduler,
           any_value(g.seed)::VARCHAR AS seed, any_value(g.steps) AS steps, any_value(g.cfg_scale)
               AS cfg_scale,
           any_value(g.width) AS width, any_value(g.height) AS height, any_value(g.source) AS source
    FROM images i LEFT JOIN generations g USING (content_hash)
    WHERE i.status = 'ok' {where}
    GROUP BY i.content_hash"""


@dataclass(frozen=True)
class CatalogFilter:
    """What a person narrows neighbours or search results to; every field optional."""

    model: str = ""  # a part of the model name
    lora: str = ""  # a part of a LoRA's name
    generator: str = ""  # exactly
    after: str = ""  # YYYY-MM-DD: files made on or after
    before: str = ""  # YYYY-MM-DD: files made on or before
    text: str = ""  # a part of the prompt

    def __post_init__(self):
        for name in ("model", "lora", "generator", "text"):
            if len(getattr(self, name)) > MAX_TEXT:
                raise QueryError(f"{name}: at most {MAX_TEXT} characters")
        for name in ("after", "before"):
            if getattr(self, name):
                _day(getattr(self, name), name)

    @property
    def empty(self) -> bool:
        return not any((self.model, self.lora, self.generator, self.after, self.before, self.text))

    def sql(self) -> tuple[str, dict]:
        """(AND-clauses over `images i` and `generations g`, their parameters)."""
        clauses, params = [], {}
        if self.model:
            clauses.append("g.model ILIKE $model ESCAPE '\\'")
            params["model"] = f"%{_escape_like(self.model)}%"
        if self.lora:
            clauses.append(
                "EXISTS (SELECT 1 FROM (SELECT unnest(g.loras) AS l) WHERE l.name ILIKE $lora "
                "ESCAPE '\\')"
            )
            params["lora"] = f"%{_escape_like(self.lora)}%"
        if self.generator:
            clauses.append("g.generator = $generator")
            params["generator"] = self.generator
        if self.text:
            clauses.append("g.prompt ILIKE $text ESCAPE '\\'")
            params["text"] = f"%{_escape_like(self.text)}%"
        if self.after:
            clauses.append("i.mtime_ns >= $after")
            params["after"] = _epoch_ns(_day(self.after, "after"))
        if self.before:
            clauses.append("i.mtime_ns < $before")
            params["before"] = _epoch_ns(_day(self.before, "before")) + 86_400 * 10**9
        return "".join(f" AND {c}" for c in clauses), params


def _day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name}: {text!r} is not a date (YYYY-MM-DD)") from None


def _epoch_ns(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) * 10**9


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _rows(con, sql: str, params: dict) -> list[dict]:
    cursor = con.execute(sql, params)
    names = [d[0] for d in cursor.description]
    out = []
    for values in cursor.fetchall():
        row = dict(zip(names, values))
        mtime = row.pop("mtime_ns", None)
        row["modified"] = (
            datetime.fromtimestamp(mtime / 1e9, timezone.utc).isoformat(timespec="seconds")
            if mtime
            else None
        )
        out.append({name: row.get(name) for name in DETAIL_COLUMNS})
    return out


def details(
    catalog_path: str | Path, hashes: list[str], where: CatalogFilter | None = None
) -> dict[str, dict]:
    """Each content hash's details (path, generation, file date), the hashes `where` rules out
    left out."""
    if not hashes:
        return {}
    clauses, params = (where or CatalogFilter()).sql()
    sql = _IMAGES.format(where="AND i.content_hash IN (SELECT unnest($hashes))" + clauses)
    with open_catalog(catalog_path, read_only=True) as con:
        return {
            row["content_hash"]: row for row in _rows(con, sql, {**params, "hashes": list(hashes)})
        }


def search_prompts(
    catalog_path: str | Path,
    query: str,
    where: CatalogFilter | None = None,
    page: int = 1,
    per_page: int = 40,
) -> tuple[int, list[dict]]:
    """(how many images match, one page of them, newest file first): every word of `query` in the
    prompt."""
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise QueryError(f"per_page must be 1 to {MAX_PER_PAGE}")
    if page < 1:
        raise QueryError("page must be at least 1")
    if len(query) > MAX_TEXT:
        raise QueryError(f"the query is over {MAX_TEXT} characters")
    clauses, params = (where or CatalogFilter()).sql()
    for n, word in enumerate(query.split()[:20]):
        clauses += f" AND g.prompt ILIKE $w{n} ESCAPE '\\'"
        params[f"w{n}"] = f"%{_escape_like(word)}%"
    sql = _IMAGES.format(where=clauses)
    with open_catalog(catalog_path, read_only=True) as con:
        total = con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()[0]
        rows = _rows(
            con,
            f"SELECT * FROM ({sql}) ORDER BY mtime_ns DESC, content_hash LIMIT $limit OFFSET "
            "$offset",
            {**params, "limit": per_page, "offset": (page - 1) * per_page},
        )
    return total, rows


def facets(catalog_path: str | Path, limit: int = 200) -> dict[str, list[str]]:
    """The generators, models and LoRA names the catalog holds (most used first), for the page's
    filters."""
    with open_catalog(catalog_path, read_only=True) as con:

        def values(sql: str) -> list[str]:
            return [v for (v,) in con.execute(sql, {"limit": limit}).fetchall() if v]

        return {
            "generators": values(
                "SELECT generator FROM generations GROUP BY 1 ORDER BY count(*) DESC LIMIT $limit"
            ),
            "models": values(
                "SELECT model FROM generations GROUP BY 1 ORDER BY count(*) DESC LIMIT $limit"
            ),
            "loras": values(
                "SELECT l.name FROM (SELECT unnest(loras) AS l FROM generations) GROUP BY 1 "
                "ORDER BY count(*) DESC LIMIT $limit"
            ),
        }


def library_file(path: str, roots: list[str]) -> Path:
    """The real file behind `path` when it lies under a library root (links resolved first, so no
    `..` and no symlink leads out); OutsideLibraryError otherwise. Relative paths are refused: a
    page has no working directory of its own."""
    if not path or "\x00" in path:
        raise OutsideLibraryError("no path given")
    candidate = Path(path)
    if not candidate.is_absolute():
        raise OutsideLibraryError(f"{path!r}: give the file's absolute path inside a library root")
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise OutsideLibraryError(f"{path}: no such file in the library") from None
    for root in roots:
        try:
            real_root = Path(root).resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real.is_relative_to(real_root) and real.is_file():
            return real
    raise OutsideLibraryError(
        f"{path}: not a file under a library root ({', '.join(roots) or 'none configured'})"
    )


def path_of(catalog_path: str | Path, content_hash: str) -> str:
    """A catalogued image's path (the first of its copies)."""
    with open_catalog(catalog_path, read_only=True) as con:
        row = con.execute(
            "SELECT min(path) FROM images WHERE status = 'ok' AND content_hash = ?", [content_hash]
        ).fetchone()
    if row is None or row[0] is None:
        raise OutsideLibraryError(f"no image {content_hash[:16]}… in the catalog")
    return row[0]


def file_key(path: Path) -> str:
    """What identifies a file's current bytes cheaply: path, size and modification time."""
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{stat.st_mtime_ns}"


def mixed_prompt(weighted: list[tuple[str | None, float]], least: float = 0.5) -> str:
    """The neighbours' prompts as one text a person can start from: their comma-separated tags, each
    scored by the summed weight of the neighbours that use it, the tags of at least `least` of
    the total weight kept (what most of them agree on), most shared first; the heaviest
    neighbour's prompt when they agree on nothing."""
    scores: dict[str, float] = {}
    spelled: dict[str, str] = {}
    total = sum(w for text, w in weighted if text) or 1.0
    for text, weight in weighted:
        for tag in dict.fromkeys(t.strip() for t in (text or "").split(",")):
            if tag:
                key = " ".join(tag.lower().split())
                scores[key] = scores.get(key, 0.0) + weight / total
                spelled.setdefault(key, tag)
    kept = [key for key, score in scores.items() if score >= least]
    if not kept:
        return max(
            ((text, w) for text, w in weighted if text), key=lambda tw: tw[1], default=("", 0)
        )[0]
    return ", ".join(spelled[key] for key in sorted(kept, key=lambda k: -scores[k]))


# ---------------------------------------------------------------- the same, from a published
# index's lookup

LOOKUP_DETAILS = (
    "model",
    "loras",
    "sampler",
    "scheduler",
    "seed",
    "steps",
    "cfg_scale",
    "mtime_ns",
)


def lookup_has_details(lookup) -> bool:
    """Whether an index's lookup carries the browsing columns (indexes published before them do
    not)."""
    return all(name in lookup.column_names for name in LOOKUP_DETAILS)


def lookup_details(lookup, rows: list[int]) -> list[dict]:
    """The details of these lookup rows, as `details` gives them, read from the memory-mapped
    lookup."""
    out = []
    for row in lookup.take(rows).to_pylist():
        mtime = row.pop("mtime_ns", None)
        row["modified"] = (
            datetime.fromtimestamp(mtime / 1e9, timezone.utc).isoformat(timespec="seconds")
            if mtime
            else None
        )
        out.append({name: row.get(name) for name in DETAIL_COLUMNS if name != "source"})
    return out


def filter_mask(lookup, where: CatalogFilter):
    """A boolean per lookup row: which images `where` lets through (vectorized: ~ms for 500k
    rows)."""
    mask = np.ones(lookup.num_rows, dtype=bool)

    def contains(column: str, text: str):
        found = pc.match_substring(lookup[column], text, ignore_case=True)
        return pc.fill_null(found, False).to_numpy(zero_copy_only=False)

    if where.model:
        mask &= contains("model", where.model)
    if where.text:
        mask &= contains("prompt", where.text)
    if where.generator:
        mask &= pc.fill_null(pc.equal(lookup["generator"], where.generator), False).to_numpy(
            zero_copy_only=False
        )
    if where.lora:
        loras = lookup["loras"].combine_chunks()
        names = pc.struct_field(pc.list_flatten(loras), "name")
        hits = pc.fill_null(
            pc.match_substring(names, where.lora, ignore_case=True), False
        ).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(loras).to_numpy()
        with_lora = np.zeros(lookup.num_rows, dtype=bool)
        with_lora[parents[hits]] = True
        mask &= with_lora
    times = (
        lookup["mtime_ns"].to_numpy(zero_copy_only=False) if (where.after or where.before) else None
    )
    if where.after:
        mask &= np.nan_to_num(times.astype(float), nan=-1) >= _epoch_ns(_day(where.after, "after"))
    if where.before:
        mask &= (
            np.nan_to_num(times.astype(float), nan=np.inf)
            < _epoch_ns(_day(where.before, "before")) + 86_400e9
        )
    return mask
