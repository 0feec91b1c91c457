"""Errors that carry a reason a person can act on."""

from __future__ import annotations


class BadFileError(Exception):
    """A file that cannot be ingested; ends up in the catalog's quarantine table.

    `reason` is a short stable code (for filtering and counting), `detail` a sentence for a person.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class LunaConfigError(Exception):
    """A setting or argument that makes the requested work impossible."""
