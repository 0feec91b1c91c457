"""Writing one ingested batch to the catalog (images, generations, quarantine) and closing a scan:
what left the library, what moved, and the quarantine's counts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from luna_core.catalog.connection import open_catalog, transaction
from luna_core.catalog.schema import SYNTAX_OF_GENERATOR
from luna_core.ingest.filereader import IngestedFile, QuarantinedFile, clean_text

_IMAGE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("content_hash", pa.string()),
        ("root", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("format", pa.string()),
        ("warnings", pa.list_(pa.string())),
    ]
)


_GENERATION_SCHEMA = pa.schema(
    [
        ("content_hash", pa.string()),
        ("generator", pa.string()),
        ("generator_version", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.string()),
        ("steps", pa.int64()),
        ("sampler", pa.string()),
        ("scheduler", pa.string()),
        ("cfg_scale", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("model", pa.string()),
        ("model_hash", pa.string()),
        ("loras", pa.list_(pa.struct([("name", pa.string()), ("weight", pa.float64())]))),
        ("extra", pa.string()),
        ("raw", pa.string()),
        ("warnings", pa.list_(pa.string())),
        ("source", pa.string()),
    ]
)


_QUARANTINE_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("root", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("size_bytes", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)


def _int32(value: Any) -> int | None:
    return value if isinstance(value, int) and -(2**31) <= value < 2**31 else None


def generation_row(result: IngestedFile) -> dict[str, Any]:
    g = result.generation
    seed = g.get("seed")
    return {
        "content_hash": result.content_hash,
        "generator": g["generator"],
        "generator_version": g.get("generator_version"),
        "prompt": g.get("prompt"),
        "negative_prompt": g.get("negative_prompt"),
        "seed": str(seed) if isinstance(seed, int) and abs(seed) < 2**127 else None,
        "steps": _int32(g.get("steps")),
        "sampler": g.get("sampler"),
        "scheduler": g.get("scheduler"),
        "cfg_scale": g.get("cfg_scale"),
        "width": _int32(g.get("width")),
        "height": _int32(g.get("height")),
        "model": g.get("model"),
        "model_hash": g.get("model_hash"),
        "loras": [
            {"name": clean_text(lora["name"]), "weight": lora["weight"]}
            for lora in g.get("loras", [])
        ],
        "extra": json.dumps(g.get("extra") or {}, ensure_ascii=False, default=str),
        "raw": json.dumps(g.get("raw") or {}, ensure_ascii=False),
        "warnings": list(g.get("warnings") or []),
        "source": g.get("source"),
    }


def commit_batch(
    catalog_path: str | Path,
    results: list[IngestedFile | QuarantinedFile],
    now: datetime,
    known_hashes: set[str],
) -> None:
    ingested = [r for r in results if isinstance(r, IngestedFile)]
    quarantined = [r for r in results if isinstance(r, QuarantinedFile)]
    images = pa.Table.from_pylist(
        [
            {
                "path": r.path,
                "content_hash": r.content_hash,
                "root": r.root,
                "size_bytes": r.size,
                "mtime_ns": r.mtime_ns,
                "width": r.width,
                "height": r.height,
                "format": r.format,
                "warnings": r.warnings,
            }
            for r in ingested
        ],
        schema=_IMAGE_SCHEMA,
    )
    fresh, seen_now = [], set()
    for r in ingested:  # one generation row per content hash; the same bytes parse the same way
        if r.content_hash not in known_hashes and r.content_hash not in seen_now:
            seen_now.add(r.content_hash)
            fresh.append(generation_row(r))
    generations = pa.Table.from_pylist(fresh, schema=_GENERATION_SCHEMA)
    bad = pa.Table.from_pylist(
        [
            {
                "path": r.path,
                "root": r.root,
                "reason": r.reason,
                "detail": r.detail,
                "size_bytes": r.size,
                "mtime_ns": r.mtime_ns,
            }
            for r in quarantined
        ],
        schema=_QUARANTINE_SCHEMA,
    )
    with (
        open_catalog(catalog_path) as con,
        transaction(con, batch_images=images, batch_generations=generations, batch_quarantine=bad),
    ):
        con.execute(
            """
            INSERT OR REPLACE INTO images
            SELECT b.path, b.content_hash, b.root, b.size_bytes, b.mtime_ns, b.width, b.height,
                b.format, 'ok',
                   COALESCE(i.first_seen, $now), $now, NULL, b.warnings
            FROM batch_images b LEFT JOIN images i ON i.path = b.path""",
            {"now": now},
        )
        con.execute(
            f"""
            INSERT OR REPLACE INTO generations (content_hash, generator, generator_version, prompt,
                negative_prompt,
                   seed, steps, sampler, scheduler, cfg_scale, width, height, model, model_hash,
                       loras, extra, raw,
                   warnings, parsed_at, source, prompt_syntax)
            SELECT content_hash, generator, generator_version, prompt, negative_prompt,
                TRY_CAST(seed AS HUGEINT),
                   steps, sampler, scheduler, cfg_scale, width, height, model, model_hash, loras,
                   extra::JSON, raw::JSON, warnings, $now, source, {SYNTAX_OF_GENERATOR}
            FROM batch_generations""",
            {"now": now},
        )
        con.execute("DELETE FROM quarantine WHERE path IN (SELECT path FROM batch_images)")
        con.execute(
            """
            INSERT OR REPLACE INTO quarantine
            SELECT path, root, reason, detail, size_bytes, mtime_ns, $now FROM batch_quarantine""",
            {"now": now},
        )
        con.execute(
            "UPDATE images SET status = 'quarantined', last_seen = $now "
            "WHERE path IN (SELECT path FROM batch_quarantine)",
            {"now": now},
        )
    known_hashes.update(seen_now)


def finish_scan(
    catalog_path: str | Path,
    roots: list[str],
    seen_images: list[str],
    seen_quarantine: list[str],
    now: datetime,
    report: IngestReport,
    run_started: datetime,
) -> None:
    """After a complete scan: unchanged rows touched, vanished rows marked missing, moves linked."""
    seen = pa.Table.from_pylist(
        [{"path": p} for p in seen_images], schema=pa.schema([("path", pa.string())])
    )
    seen_q = pa.Table.from_pylist(
        [{"path": p} for p in seen_quarantine], schema=pa.schema([("path", pa.string())])
    )
    roots_list = list(roots)
    with (
        open_catalog(catalog_path) as con,
        transaction(con, seen_paths=seen, seen_quarantine=seen_q),
    ):
        con.execute(
            "UPDATE images SET last_seen = $now, status = 'ok' WHERE path IN (SELECT path FROM "
            "seen_paths)",
            {"now": now},
        )
        con.execute(
            "UPDATE quarantine SET seen_at = $now WHERE path IN (SELECT path FROM seen_quarantine)",
            {"now": now},
        )
        report.missing = len(
            con.execute(
                """
            UPDATE images SET status = 'missing'
            WHERE list_contains($roots, root) AND status <> 'missing' AND last_seen < $started
            RETURNING path""",
                {"roots": roots_list, "started": run_started},
            ).fetchall()
        )
        con.execute(
            """DELETE FROM quarantine WHERE list_contains($roots, root) AND seen_at < $started""",
            {"roots": roots_list, "started": run_started},
        )
        # A new path whose bytes are those of a path that just went missing is that file, moved.
        report.moved = len(
            con.execute(
                """
            UPDATE images AS n SET moved_from = o.path, first_seen = LEAST(n.first_seen,
                o.first_seen)
            FROM images AS o
            WHERE n.content_hash = o.content_hash AND n.status = 'ok' AND n.first_seen >= $started
              AND o.status = 'missing' AND o.last_seen < $started AND n.moved_from IS NULL
            RETURNING n.path""",
                {"started": run_started},
            ).fetchall()
        )
        report.quarantined_total = con.execute(
            "SELECT count(*) FROM quarantine WHERE list_contains($roots, root)",
            {"roots": roots_list},
        ).fetchone()[0]
        report.by_generator = dict(
            con.execute(
                """
            SELECT g.generator, count(*) FROM images i JOIN generations g USING (content_hash)
            WHERE i.status = 'ok' AND list_contains($roots, i.root) GROUP BY 1 ORDER BY 2 DESC""",
                {"roots": roots_list},
            ).fetchall()
        )
        report.by_reason = dict(
            con.execute(
                """
            SELECT reason, count(*) FROM quarantine WHERE list_contains($roots, root) GROUP BY 1
                ORDER BY 2 DESC""",
                {"roots": roots_list},
            ).fetchall()
        )
        con.execute(
            "UPDATE ingest_runs SET finished_at = $now, counts = $counts WHERE run_id = $run",
            {"now": _utcnow(), "counts": json.dumps(report.counts()), "run": report.run_id},
        )


@dataclass
class IngestReport:
    run_id: str
    roots: list[str]
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    missing: int = 0
    moved: int = 0
    quarantined: int = 0  # quarantined in this run (new or changed files that failed)
    quarantined_total: int = 0  # all files under the roots currently in quarantine
    ignored: int = 0
    files_read: int = 0
    bytes_read: int = 0
    seconds: float = 0.0
    by_generator: dict[str, int] = field(default_factory=dict)
    # generations whose prompt syntax a changed setting moved (their prompts re-encode)
    syntax_changed: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)
    # not scanned: their rows were left as they were
    unavailable_roots: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.new + self.changed + self.unchanged + self.quarantined_total

    def counts(self) -> dict[str, int]:
        keys = (
            "new",
            "changed",
            "unchanged",
            "missing",
            "moved",
            "quarantined",
            "quarantined_total",
            "ignored",
            "files_read",
            "bytes_read",
        )
        return {k: getattr(self, k) for k in keys}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
