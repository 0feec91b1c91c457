"""Read one library file: hash its bytes, probe its container, parse its metadata.

This runs in ingest worker processes, so it imports only what that needs (no DuckDB, no Arrow):
a worker starts fast and a large library's ingest is bound by disk and hashing, not start-up.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from luna_core.containers.probe import ProbeLimits, probe_image
from luna_core.errors import BadFileError
from luna_core.ingest.scan import FileEntry
from luna_core.metadata.dispatch import GenerationRecord, parse_generation
from luna_core.prompts.syntax import comfy_rules_by_date

log = logging.getLogger(__name__)


@dataclass
class IngestedFile:
    path: str
    root: str
    size: int
    mtime_ns: int
    content_hash: str
    format: str
    width: int
    height: int
    warnings: list[str]
    generation: dict[str, Any]


@dataclass
class QuarantinedFile:
    path: str
    root: str
    reason: str
    detail: str
    size: int | None = None
    mtime_ns: int | None = None


def clean_text(value: Any) -> Any:
    # DuckDB VARCHAR rejects NUL; metadata strings occasionally carry them.
    return value.replace("\x00", "") if isinstance(value, str) else value


def read_file(entry: FileEntry, limits: ProbeLimits) -> IngestedFile | QuarantinedFile:
    """Read, hash and parse one file. Never raises for a bad file: it becomes a QuarantinedFile."""
    path = entry.path
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_size > limits.max_file_bytes:
                raise BadFileError(
                    "file_too_large",
                    f"{st.st_size:,} bytes is over the {limits.max_file_bytes:,} byte bound",
                )
            data = fh.read(limits.max_file_bytes + 1)
    except FileNotFoundError:
        return QuarantinedFile(
            path, entry.root, "vanished", "the file was deleted while the scan ran"
        )
    except PermissionError:
        return QuarantinedFile(
            path,
            entry.root,
            "permission_denied",
            "the file cannot be read: permission denied",
            entry.size,
            entry.mtime_ns,
        )
    except BadFileError as exc:
        return QuarantinedFile(path, entry.root, exc.reason, exc.detail, entry.size, entry.mtime_ns)
    except OSError as exc:
        return QuarantinedFile(
            path,
            entry.root,
            "unreadable",
            f"the file cannot be read: {exc.strerror or exc}",
            entry.size,
            entry.mtime_ns,
        )
    size, mtime_ns = len(data), st.st_mtime_ns
    try:
        probe = probe_image(data, limits)
    except BadFileError as exc:
        return QuarantinedFile(path, entry.root, exc.reason, exc.detail, size, mtime_ns)
    warnings = list(probe.warnings)
    suffix = Path(path).suffix.lower().lstrip(".")
    expected = {"png": ("png",), "jpeg": ("jpg", "jpeg", "jfif"), "webp": ("webp",)}[probe.format]
    if suffix not in expected:
        warnings.append(
            f"file name ends in .{suffix or '(none)'} but the content is {probe.format.upper()}"
        )
    try:
        record = parse_generation(probe.items)
    except Exception as exc:  # a parser bug must not lose the file: keep it, say why
        log.exception("metadata parser failed on %s", path)
        record = GenerationRecord(
            generator="unknown",
            raw=dict(probe.items),
            warnings=[f"metadata parser failed: {type(exc).__name__}: {exc}"],
        )
    if record.generator == "ComfyUI" and "prompt_syntax" not in record.extra:
        day = datetime.fromtimestamp(mtime_ns / 1e9, timezone.utc)
        record.extra["prompt_syntax"], record.extra["prompt_syntax_from"] = comfy_rules_by_date(
            day.year, day.month, day.day
        )
    generation = {k: clean_text(v) for k, v in record.to_row().items()}
    return IngestedFile(
        path,
        entry.root,
        size,
        mtime_ns,
        hashlib.sha256(data).hexdigest(),
        probe.format,
        probe.width,
        probe.height,
        warnings,
        generation,
    )


def read_chunk(
    entries: list[FileEntry], limits: ProbeLimits
) -> list[IngestedFile | QuarantinedFile]:
    return [read_file(entry, limits) for entry in entries]
