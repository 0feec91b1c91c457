"""The report's test set: frozen per report series, so figures of one series compare the same
images.

The test *split* grows as the library does (luna_core.catalog.splits); the report's test *set*
does not. A series freezes the content hashes it scores, once, in `HOME/reports/test_set.json`.
Every report of the series scores those images that can still be scored, and says which were left
out and why:

- left the library (deleted), or no embedding or encoded prompt yet;
- a near-duplicate of a train or val image (a catalog split before near-duplicates shared a split).

A new series starts when there is none, when asked (`new_series`), when the eligible test split has
grown to twice the frozen set (and the set is below `max_images`), or when none of the set's images
can be scored any more; the report says so.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple

import numpy as np

from luna_core.catalog.connection import open_catalog
from luna_core.catalog.splits import twins_of
from luna_core.errors import NotBuiltError
from luna_core.files import write_atomically
from luna_core.home.home import LunaHome
from luna_core.projector.pairs import Pairs

# the eligible test split at this multiple of the frozen set starts a new series
GROWTH_FOR_NEW_SERIES = 2.0


class EmptyTestSet(NotBuiltError):
    """No test image can be scored yet (a small or new library): nothing to report, not a
    failure."""


@dataclass
class FrozenSet:
    series: int
    frozen_at: str
    reason: str  # why this series began
    members: list[str]  # content hashes, sorted
    # content hash -> its path when frozen (for people)
    paths: dict[str, str] = field(default_factory=dict)


@dataclass
class TestSet:
    frozen: FrozenSet
    began_now: bool  # this call started the series
    pairs: Pairs  # the members scored, in image-id order
    content_hashes: list[str]  # of `pairs`, same order
    paths: list[str]
    leave_out: dict[
        int, frozenset[int]
    ]  # image id -> ids of its near-duplicates (left out with it)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # reason -> paths (or hashes)
    joined_since: int = 0  # eligible test images that are not in the frozen set
    # split -> images / with pairs
    split_sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(f"series {self.frozen.series}|".encode())
        digest.update(self.pairs.image_ids.tobytes())
        digest.update(self.pairs.prompt_rows.tobytes())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        """One sentence: which set, since when, and whether it changed with this report."""
        f = self.frozen
        text = (
            f"Test set: series {f.series}, frozen {f.frozen_at} with {len(f.members)} images "
            f"({f.reason}); {len(self.pairs.image_ids)} scored in this report."
        )
        if self.began_now:
            text += (
                " **The test set changed with this report**: figures are not comparable with "
                "earlier series."
            )
        if self.joined_since:
            text += (
                f" {self.joined_since} test images joined the library since the freeze and are "
                "not scored "
                f"(a new series starts when the test split reaches {GROWTH_FOR_NEW_SERIES:g}× "
                "the set)."
            )
        return text


class _Image(NamedTuple):
    content_hash: str
    image_id: int
    split: str
    vision_row: int | None
    prompt_row: int | None
    path: str
    prompt_chunks: int | None

    @property
    def scorable(self) -> bool:
        return self.vision_row is not None and self.prompt_row is not None


def _path(home: LunaHome):
    return home.reports_dir / "test_set.json"


def _read(home: LunaHome) -> FrozenSet | None:
    try:
        data = json.loads(_path(home).read_text())
        return FrozenSet(
            int(data["series"]),
            str(data["frozen_at"]),
            str(data["reason"]),
            list(data["members"]),
            dict(data.get("paths") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_test_set(
    home: LunaHome, max_images: int = 2000, seed: int = 0, new_series: bool = False
) -> TestSet:
    """The current series' test set (a new series first when due), with what it leaves out and
    why."""
    with open_catalog(home.catalog_path) as con:
        if not con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'library'"
        ).fetchone()[0]:
            raise NotBuiltError(
                "the catalog has no `library` view yet: materialize luna_catalog first"
            )
        images = [
            _Image(*row)
            for row in con.execute("""
            SELECT content_hash, image_id, split, vision_row, prompt_row, path, prompt_chunks
            FROM library ORDER BY image_id""").fetchall()
        ]
        test_hashes = [i.content_hash for i in images if i.split == "test"]
        twins = twins_of(con, test_hashes)
        id_of = dict(con.execute("SELECT content_hash, image_id FROM image_ids").fetchall())
    sizes: dict[str, dict[str, int]] = {}
    for image in images:
        entry = sizes.setdefault(image.split, {"images": 0, "with embedding and prompt": 0})
        entry["images"] += 1
        entry["with embedding and prompt"] += image.scorable
    by_hash = {i.content_hash: i for i in images}
    leaked = {
        h
        for h in test_hashes
        if any(t in by_hash and by_hash[t].split in ("train", "val") for t in twins.get(h, ()))
    }
    eligible = sorted(h for h in test_hashes if h not in leaked and by_hash[h].scorable)

    frozen, began = _read(home), False
    if new_series:
        reason = "asked for a new series"
    elif frozen is None:
        reason = "first report"
    elif (
        len(eligible) >= GROWTH_FOR_NEW_SERIES * len(frozen.members)
        and len(frozen.members) < max_images
    ):
        reason = f"the test split grew from {len(frozen.members)} to {len(eligible)} images"
    elif eligible and not set(frozen.members) & set(eligible):
        reason = (
            f"none of series {frozen.series}'s {len(frozen.members)} images can be scored any more"
        )
    else:
        reason = None
    if reason is not None:
        if not eligible:
            raise EmptyTestSet(
                f"the test split has no image with both an embedding and an encoded prompt yet "
                f"({len(test_hashes)} test images, {len(leaked)} of them near-duplicates of "
                "train or "
                "val images): a report needs at least one"
            )
        members = eligible
        if len(members) > max_images:  # a deterministic sample, stable while the set is frozen
            keep = np.sort(
                np.random.default_rng(seed).choice(len(members), max_images, replace=False)
            )
            members = [members[i] for i in keep]
        frozen = FrozenSet(
            (frozen.series + 1) if frozen else 1,
            datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            reason,
            members,
            {h: by_hash[h].path for h in members},
        )
        write_atomically(_path(home), lambda tmp: tmp.write_text(json.dumps(asdict(frozen))))
        began = True

    excluded: dict[str, list[str]] = {}
    scored: list[_Image] = []
    for h in frozen.members:
        image = by_hash.get(h)
        why = (
            "left the library"
            if image is None
            else "near-duplicate of a train or val image"
            if h in leaked
            else "no embedding or encoded prompt"
            if not image.scorable
            else None
        )
        if why:
            excluded.setdefault(why, []).append(
                image.path if image else frozen.paths.get(h, h[:16])
            )
        else:
            scored.append(image)
    if not scored:  # and no other test image is scorable either (else a new series began above)
        raise EmptyTestSet(
            f"none of the {len(frozen.members)} images of test series {frozen.series} can be "
            "scored now, and no other test image has both an embedding and an encoded prompt"
        )
    scored.sort(key=lambda i: i.image_id)
    pairs = Pairs(
        np.array([i.image_id for i in scored], np.int64),
        np.array([i.vision_row for i in scored], np.int64),
        np.array([i.prompt_row for i in scored], np.int64),
        np.array([i.prompt_chunks or 1 for i in scored], np.int64),
    )
    leave_out = {
        int(i.image_id): frozenset(
            int(id_of[t]) for t in twins.get(i.content_hash, ()) if t in id_of
        )
        for i in scored
    }
    members = set(frozen.members)
    return TestSet(
        frozen,
        began,
        pairs,
        [i.content_hash for i in scored],
        [i.path for i in scored],
        leave_out,
        excluded,
        sum(1 for h in eligible if h not in members),
        sizes,
    )
