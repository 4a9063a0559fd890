"""Database URLs: where the store lives, how URLs are normalised, and how they are masked.

Resolution order: an explicit `--db` value, then a value from a config, then the
TUNEFLEET_DB_URL variable (read by CLIs at their edge and passed in), then the default SQLite
file under ~/.local/share/tunefleet.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_VAR = "TUNEFLEET_DB_URL"
DEFAULT_PATH = Path("~/.local/share/tunefleet/records.db")

_PASSWORD_IN_URL = re.compile(r"(?P<head>://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)")


def default_url() -> str:
    """The embedded default: a SQLite file in the user's data folder (created on demand)."""
    return "sqlite:///" + str(DEFAULT_PATH.expanduser())


def resolve_url(explicit: str | None, env: Mapping[str, str], config: str | None = None) -> str:
    """Pick the database URL: explicit value, config value, TUNEFLEET_DB_URL, then the default."""
    for candidate in (explicit, config, env.get(ENV_VAR)):
        if candidate and candidate.strip():
            return normalize_url(candidate.strip())
    return default_url()


def normalize_url(url: str) -> str:
    """Accept plain file paths and `postgres://` URLs; name the psycopg 3 driver explicitly."""
    if "://" not in url:
        return "sqlite:///" + str(Path(url).expanduser().resolve())
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def parse_url(url: str) -> URL:
    """Parse a normalised URL, raising ValueError with the masked URL if it is malformed."""
    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - a malformed port only fails when read
    except (ArgumentError, ValueError):
        raise ValueError(
            f"not a database URL: {mask_url(url)!r}; expected "
            "postgresql://user:password@host:port/dbname or a SQLite file path"
        ) from None
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe to print or log."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", url)


def scrub(text: str, url: str | URL) -> str:
    """Remove the URL's password (if any) from a message produced by a driver."""
    parsed = url if isinstance(url, URL) else _try_parse(url)
    password = parsed.password if parsed is not None else None
    if password:
        text = text.replace(str(password), "***")
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", text)


def _try_parse(url: str) -> URL | None:
    try:
        return make_url(url)
    except (ArgumentError, ValueError):
        return None
