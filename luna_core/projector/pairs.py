"""Image and prompt pairs of a split, read from the library view: what projectors train and are
scored on, with a fingerprint of which pairs trained a model."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb
import numpy as np

from luna_core.catalog.connection import open_catalog
from luna_core.errors import LunaConfigError
from luna_core.home.home import LunaHome
from luna_core.models.profiles import ModelProfile


@dataclass
class Pairs:
    """Image and prompt pairs: the vision row, and the prompt's first conditioning row and how many
    chunk rows follow it (a prompt of 150 tokens has two)."""

    image_ids: np.ndarray
    vision_rows: np.ndarray
    prompt_rows: np.ndarray
    prompt_chunks: np.ndarray | None = None  # None: one chunk each

    def chunk_counts(self) -> np.ndarray:
        if self.prompt_chunks is None:
            return np.ones(len(self.prompt_rows), np.int64)
        return np.maximum(self.prompt_chunks, 1)

    def every_chunk(self) -> Pairs:
        """One pair per chunk row: the image against each of its prompt's chunks, so a long
        prompt teaches with all of its tokens, not its first 77 (each chunk row carries the
        prompt's pooled output)."""
        counts = self.chunk_counts()
        offsets = (
            np.concatenate([np.arange(c, dtype=np.int64) for c in counts])
            if len(counts)
            else (np.zeros(0, np.int64))
        )
        return Pairs(
            np.repeat(self.image_ids, counts),
            np.repeat(self.vision_rows, counts),
            np.repeat(self.prompt_rows, counts) + offsets,
        )


def load_pairs(home: LunaHome, split: str, where: str | None = None) -> Pairs:
    """Pairs of one split; `where` is an SQL condition over the `library` view (subset specialists).

    The condition is a person's text pasted into SQL, so it runs on a sandboxed connection:
    read-only, no files or extensions outside the catalog. It can select; it can never write."""
    condition = f" AND ({where})" if where else ""
    with open_catalog(home.catalog_path, sandboxed=bool(where)) as con:
        try:
            rows = con.execute(
                f"""
                SELECT image_id, vision_row, prompt_row, coalesce(prompt_chunks, 1) FROM library
                WHERE vision_row IS NOT NULL AND prompt_row IS NOT NULL AND split = ?{condition}
                ORDER BY image_id""",
                [split],
            ).fetchall()
        except duckdb.Error as exc:
            if not where:
                raise
            raise LunaConfigError(
                f"subset filter {where!r} is not a condition over the library view: "
                f"{str(exc).splitlines()[0]}"
            ) from None
    array = np.array(rows, dtype=np.int64).reshape(-1, 4)
    return Pairs(array[:, 0], array[:, 1], array[:, 2], array[:, 3])


def fingerprint(pairs: Pairs, profile: ModelProfile) -> str:
    """Which pairs trained a model: the image ids, prompt rows and chunk counts, and the stores they
    come from."""

    digest = hashlib.sha256(f"{profile.vision_key}|{profile.text_key}|".encode())
    digest.update(pairs.image_ids.tobytes())
    digest.update(pairs.prompt_rows.tobytes())
    digest.update(pairs.chunk_counts().astype(np.int64).tobytes())
    return digest.hexdigest()[:16]
