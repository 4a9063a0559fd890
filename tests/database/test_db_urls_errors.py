"""URL resolution and masking, and one clear, password-free message per connection failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tunefleet.database import (
    AuthenticationError,
    DatabaseError,
    DatabaseUnreachableError,
    RecordStore,
    default_url,
    mask_url,
    normalize_url,
    resolve_url,
)


def test_resolution_order_is_explicit_then_config_then_env_then_default() -> None:
    env = {"TUNEFLEET_DB_URL": "postgresql://u:p@h/env"}
    assert resolve_url("sqlite:///x.db", env, "sqlite:///c.db") == "sqlite:///x.db"
    assert resolve_url(None, env, "sqlite:///c.db") == "sqlite:///c.db"
    assert resolve_url(None, env) == "postgresql+psycopg://u:p@h/env"
    assert resolve_url(None, {}) == default_url()
    assert default_url().endswith(".local/share/tunefleet/records.db")
    assert resolve_url("", {}) == default_url()


def test_paths_and_postgres_urls_are_normalised(tmp_path: Path) -> None:
    assert normalize_url(str(tmp_path / "a.db")) == f"sqlite:///{tmp_path / 'a.db'}"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_masking_hides_the_password() -> None:
    url = "postgresql+psycopg://alice:s3cr%40t@db.example:5432/records"
    masked = mask_url(url)
    assert "s3cr" not in masked and "alice:***@db.example" in masked
    assert "hunter2" not in mask_url("weird://bob:hunter2@host/x y z")


def test_the_default_folder_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deep' / 'er' / 'records.db'}"
    with RecordStore.open(url) as store:
        assert store.stats().records == 0
    assert (tmp_path / "deep" / "er" / "records.db").exists()


def test_a_missing_file_is_not_created_when_opening_for_reading(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnreachableError, match="db init"):
        RecordStore.open(str(tmp_path / "none.db"), create=False)
    assert not (tmp_path / "none.db").exists()


def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"this is not a database, just a text file that is long enough" * 20)
    with pytest.raises(DatabaseError, match="not a SQLite database"):
        RecordStore.open(str(path))


def test_an_unreachable_server_gives_one_clear_line() -> None:
    url = "postgresql://tunefleet:topsecret@127.0.0.1:1/records"
    with pytest.raises(DatabaseUnreachableError) as info:
        RecordStore.open(url)
    message = str(info.value)
    assert "cannot reach" in message and "127.0.0.1:1" in message
    assert "topsecret" not in message and "\n" not in message


@pytest.mark.postgres
def test_a_wrong_password_is_named_without_revealing_it(postgres_url: str) -> None:
    url = make_url(postgres_url).set(password="not-the-password-123")
    with pytest.raises(AuthenticationError) as info:
        RecordStore.open(url.render_as_string(hide_password=False))
    message = str(info.value)
    assert "wrong user or password" in message
    assert "not-the-password-123" not in message
    assert make_url(postgres_url).password not in message
    assert "\n" not in message


@pytest.mark.postgres
def test_a_missing_database_is_named(postgres_url: str) -> None:
    url = make_url(postgres_url).set(database="no_such_tunefleet_db")
    with pytest.raises(DatabaseUnreachableError, match="no_such_tunefleet_db"):
        RecordStore.open(url.render_as_string(hide_password=False))


def test_no_environment_variable_is_read_inside_the_package(monkeypatch) -> None:
    monkeypatch.setitem(os.environ, "TUNEFLEET_DB_URL", "postgresql://x:y@nowhere/z")
    assert resolve_url(None, {}) == default_url()
