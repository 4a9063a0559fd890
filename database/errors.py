"""Errors of the record store: one base class, each with a message a user can act on.

No message ever carries a password: URLs are masked before they are put into a message.
"""

from __future__ import annotations


class DatabaseError(Exception):
    """Base of every error the record store raises on purpose."""


class DatabaseUnreachableError(DatabaseError):
    """The server (or the SQLite file) cannot be reached or opened."""


class AuthenticationError(DatabaseError):
    """The server refused the login: wrong user or password."""


class SchemaError(DatabaseError):
    """The database has no tunefleet schema, or one at another revision than this code."""


class SchemaTooOldError(SchemaError):
    """The schema is at an older revision; `tunefleet db migrate` brings it to head."""


class UnknownKeyError(DatabaseError, KeyError):
    """A record names a workload or target that was never registered with ensure_*."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidRecordError(DatabaseError, ValueError):
    """A record or job field is out of its domain (status, timings, budget)."""


class ImportFileError(DatabaseError):
    """An import file is not a tunefleet records file, has another version or is damaged."""

    def __init__(self, path: str, line: int, reason: str) -> None:
        super().__init__(f"{path}: line {line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason
