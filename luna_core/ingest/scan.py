"""Walk library roots with stat calls only: every regular file, or a problem with its reason.

Directory links are followed once (a link back into an already-walked folder is reported, not
looped through); special files (FIFOs, sockets, devices) are reported, never opened.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import stat
from dataclasses import dataclass
from typing import Iterator

# Files that operating systems and sync tools drop into folders; skipped and counted, not
# quarantined.
DEFAULT_IGNORE = (".DS_Store", "Thumbs.db", "desktop.ini", "._*", ".*.swp", "*.tmp", ".luna-*")


@dataclass(frozen=True)
class FileEntry:
    path: str
    root: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    root: str
    reason: str
    detail: str


@dataclass
class ScanStats:
    ignored: int = 0
    directories: int = 0


def _problem_for(err: OSError, path: str, root: str, what: str) -> ScanProblem:
    if err.errno == errno.ELOOP:
        return ScanProblem(
            path, root, "symlink_loop", f"{what} is a symbolic link that loops back on itself"
        )
    if err.errno == errno.ENOENT:
        if os.path.islink(path):
            target = os.readlink(path)
            return ScanProblem(
                path,
                root,
                "broken_link",
                f"{what} is a symbolic link to {target!r}, which does not exist",
            )
        return ScanProblem(path, root, "vanished", f"{what} was deleted while the scan ran")
    if err.errno in (errno.EACCES, errno.EPERM):
        return ScanProblem(
            path, root, "permission_denied", f"{what} cannot be read: permission denied"
        )
    return ScanProblem(path, root, "unreadable", f"{what} cannot be read: {err.strerror or err}")


def walk_root(
    root: str, ignore: tuple[str, ...] = DEFAULT_IGNORE, stats: ScanStats | None = None
) -> Iterator[FileEntry | ScanProblem]:
    """Every file under `root` as a FileEntry (absolute path, size, mtime) or a ScanProblem."""
    stats = stats if stats is not None else ScanStats()
    root = os.path.abspath(root)
    try:
        root_stat = os.stat(root)
    except OSError as err:
        yield _problem_for(err, root, root, "library root")
        return
    if not stat.S_ISDIR(root_stat.st_mode):
        yield ScanProblem(root, root, "not_a_directory", "library root is not a folder")
        return
    visited = {(root_stat.st_dev, root_stat.st_ino): root}
    pending = [root]
    while pending:
        folder = pending.pop()
        stats.directories += 1
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            yield _problem_for(err, folder, root, "folder")
            continue
        subfolders = []
        for entry in entries:
            if any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in ignore):
                stats.ignored += 1
                continue
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as err:
                yield _problem_for(err, entry.path, root, "file")
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    yield ScanProblem(
                        entry.path,
                        root,
                        "symlink_loop",
                        f"folder link leads back to {visited[key]}, which is already scanned",
                    )
                    continue
                visited[key] = entry.path
                subfolders.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                yield FileEntry(entry.path, root, st.st_size, st.st_mtime_ns)
            else:
                yield ScanProblem(
                    entry.path,
                    root,
                    "not_a_file",
                    "a special file (pipe, socket or device), not an image",
                )
        pending.extend(reversed(subfolders))


def fingerprint_roots(
    roots: list[str], ignore: tuple[str, ...] = DEFAULT_IGNORE
) -> tuple[int, str]:
    """(file count, digest of every path+size+mtime) for the roots; cheap change detection."""

    digest = hashlib.blake2b(digest_size=16)
    count = 0
    for root in roots:
        for item in walk_root(root, ignore):
            count += 1
            if isinstance(item, FileEntry):
                digest.update(
                    f"{item.path}\0{item.size}\0{item.mtime_ns}\n".encode(
                        "utf-8", "surrogateescape"
                    )
                )
            else:
                digest.update(f"{item.path}\0{item.reason}\n".encode("utf-8", "surrogateescape"))
    return count, digest.hexdigest()
