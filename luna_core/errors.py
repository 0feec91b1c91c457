"""Errors that carry a reason a person can act on.

Every error Luna raises for a user's mistake or a store's state is a `LunaError`; the kind says what
to do next, and the CLI prints the message as one line and exits with the kind's code:

- `LunaConfigError` (2): a setting or argument that makes the requested work impossible: fix it.
- `NotBuiltError` (3): something the work needs has not been built yet: build it first.
- `CorruptStoreError` (4): a store on disk is damaged or inconsistent: rebuild or restore it.
- `BusyError` (5): another process holds the store: wait for it, then try again.
"""

from __future__ import annotations


class LunaError(Exception):
    """Base of every error Luna explains to a person; `exit_code` is what the CLI returns."""

    exit_code = 1


class LunaConfigError(LunaError):
    """A setting or argument that makes the requested work impossible."""

    exit_code = 2


class NotBuiltError(LunaError):
    """A store, index or model version the work needs does not exist yet."""

    exit_code = 3


class CorruptStoreError(LunaError):
    """A store on disk that cannot be read as Luna wrote it."""

    exit_code = 4


class BusyError(LunaError):
    """A store held by another process for longer than Luna waits."""

    exit_code = 5


class BadFileError(LunaError):
    """A file that cannot be ingested; ends up in the catalog's quarantine table.

    `reason` is a short stable code (for filtering and counting), `detail` a sentence for a person.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class QueryError(LunaConfigError):
    """A query that cannot be answered as asked (a box, a mix, k); the message says why."""


class OutsideLibraryError(LunaConfigError):
    """A path asked for that lies outside every library root (or is no library file): never
    served."""
