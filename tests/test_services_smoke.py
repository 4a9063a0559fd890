"""Prove the server-backed test set-up really talks to PostgreSQL and Redis."""

from __future__ import annotations

import uuid

import pytest


@pytest.mark.postgres
def test_postgres_write_and_read_back(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    table = f"smoke_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id integer PRIMARY KEY, note text)"))
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1, 'written')"))
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT note FROM {table}")).scalar_one() == "written"
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
            assert int(version.split(".")[0]) >= 12
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.dispose()


@pytest.mark.redis
def test_redis_write_and_read_back(redis_url: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    key = f"tunefleet:smoke:{uuid.uuid4().hex}"
    try:
        client.set(key, b"written", ex=60)
        assert client.get(key) == b"written"
        stream = key + ":events"
        client.xadd(stream, {"trial": "1"})
        entries = client.xrange(stream)
        assert [fields for _, fields in entries] == [{b"trial": b"1"}]
    finally:
        client.delete(key, key + ":events")
        client.close()
