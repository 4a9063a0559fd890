"""Fixtures for the record store: a fresh database per test on SQLite and on PostgreSQL.

Each PostgreSQL test gets its own schema (selected through the connection's search_path),
dropped afterwards, so reruns start clean and tests never see each other's rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
]


@pytest.fixture
def pg_schema_url(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose connections use a fresh, empty schema."""
    name = f"tf_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()


def fresh_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> str:
    """An empty database of the backend: a new SQLite file or a new PostgreSQL schema."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    return request.getfixturevalue("pg_schema_url") if name == "a" else _extra_pg(request, name)


def _extra_pg(request: pytest.FixtureRequest, name: str) -> str:
    base = request.getfixturevalue("postgres_url")
    schema = f"tf_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()

    request.addfinalizer(drop)
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database on each backend."""
    return fresh_url(request.param, request, tmp_path, "a")


@pytest.fixture(params=BACKENDS)
def other_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A second empty database on each backend (for merges across backends)."""
    return fresh_url(request.param, request, tmp_path, "b")
