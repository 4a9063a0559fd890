"""Engines per backend and the translation of driver errors into clear DatabaseErrors.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and write transactions
start with BEGIN IMMEDIATE so that concurrent writers queue on the busy handler instead of
failing on a lock upgrade. PostgreSQL (the shared mode) uses psycopg 3 and plain transactions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, NoSuchModuleError, SQLAlchemyError

from tunefleet.database.errors import (
    AuthenticationError,
    DatabaseError,
    DatabaseUnreachableError,
)
from tunefleet.database.urls import mask_url, parse_url, scrub

WRITE_OPTION = "tunefleet_write"
ASYNC_DRIVERS = frozenset({"asyncpg", "psycopg_async", "aiosqlite"})


@dataclass(frozen=True)
class EngineOptions:
    """Connection settings that are not part of the URL."""

    busy_timeout_s: float = 60.0  # SQLite: how long a writer waits for the lock
    connect_timeout_s: int = 10  # PostgreSQL: how long to wait for the server
    echo: bool = False


def make_engine(url: str, options: EngineOptions, create_dir: bool = False) -> Engine:
    """An engine for a normalised URL; SQLite gets WAL, busy timeout, BEGIN IMMEDIATE writes."""
    try:
        parsed = parse_url(url)
    except ValueError as err:
        raise DatabaseError(str(err)) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed, options, create_dir)
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        driver = parsed.get_driver_name()
        if driver in ASYNC_DRIVERS:
            raise DatabaseError(
                f"{mask_url(parsed)!r} names the asyncio driver {driver!r}, which tunefleet cannot "
                "use; write postgresql:// (psycopg 3) instead"
            )
        try:
            return create_engine(
                parsed,
                connect_args={"connect_timeout": options.connect_timeout_s},
                echo=options.echo,
                hide_parameters=True,
            )
        except (ImportError, NoSuchModuleError) as err:
            raise DatabaseError(
                f"the database driver {driver!r} of {mask_url(parsed)!r} is not installed "
                f"({err}); write postgresql:// to use psycopg 3, which tunefleet installs"
            ) from None
    raise DatabaseError(
        f"unsupported database {mask_url(parsed)!r}: use a sqlite:/// file or a postgresql:// URL"
    )


def sqlite_file_missing(url: str) -> str | None:
    """The path of a SQLite file URL whose file does not exist yet, else None."""
    try:
        parsed = parse_url(url)
    except ValueError:
        return None
    path = parsed.database or ""
    if (
        parsed.get_backend_name() != "sqlite"
        or path in ("", ":memory:")
        or path.startswith("file:")
    ):
        return None
    return None if Path(path).expanduser().exists() else path


def _sqlite_engine(url: URL, options: EngineOptions, create_dir: bool) -> Engine:
    path = url.database or ""
    in_memory = path in ("", ":memory:") or path.startswith("file::memory:")
    if not in_memory and create_dir:
        folder = Path(path).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DatabaseError(
                f"cannot create the folder {folder} for the SQLite file "
                f"({err.strerror or type(err).__name__}); give --db a path in a writable folder"
            ) from None
    engine = create_engine(url, connect_args={"timeout": options.busy_timeout_s}, echo=options.echo)
    busy_ms = int(options.busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


_AUTH = re.compile(r"password authentication failed|no password supplied|authentication failed")
_UNREACHABLE = re.compile(
    r"connection refused|could not connect|timeout expired|timed out|"
    r"could not translate host name|name or service not known|no route to host|"
    r"connection to server .* failed|server closed the connection|unable to open database file",
    re.IGNORECASE,
)
_NO_DATABASE = re.compile(r'database "([^"]+)" does not exist')


def translate(err: BaseException, url: str | URL) -> DatabaseError:
    """Map a driver or SQLAlchemy error to a DatabaseError with one clear, password-free line."""
    if isinstance(err, DatabaseError):
        return err
    masked = mask_url(url)
    raw = str(err.orig) if isinstance(err, DBAPIError) and err.orig is not None else str(err)
    detail = scrub(_first_line(raw), url)
    if _AUTH.search(raw):
        user = _user_of(url)
        return AuthenticationError(
            f"the database at {masked} refused the login for user {user!r}: wrong user or "
            "password; fix the credentials in --db or TUNEFLEET_DB_URL"
        )
    missing = _NO_DATABASE.search(raw)
    if missing:
        return DatabaseUnreachableError(
            f"the server at {masked} has no database {missing.group(1)!r}; create it first"
        )
    if _UNREACHABLE.search(raw):
        if "unable to open database file" in raw:
            return DatabaseUnreachableError(
                f"cannot open the SQLite file of {masked}: check that its folder exists "
                "and is writable"
            )
        return DatabaseUnreachableError(
            f"cannot reach the database at {masked} ({detail}); check the host, port and "
            "that the server is running"
        )
    if "file is not a database" in raw:
        return DatabaseError(f"{masked} is not a SQLite database file")
    return DatabaseError(f"database error at {masked}: {detail}")


@contextmanager
def translated_errors(url: str | URL) -> Iterator[None]:
    """Re-raise SQLAlchemy errors inside the block as DatabaseErrors (credentials masked)."""
    try:
        yield
    except SQLAlchemyError as err:
        raise translate(err, url) from None


def is_locked_error(err: BaseException) -> bool:
    """True for SQLite's transient 'database is locked' / 'busy' errors, worth a retry."""
    text = str(err.orig) if isinstance(err, DBAPIError) and err.orig is not None else str(err)
    return "database is locked" in text or "database is busy" in text


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else text.strip()


def _user_of(url: str | URL) -> str:
    try:
        return (url if isinstance(url, URL) else parse_url(url)).username or ""
    except ValueError:
        return ""
