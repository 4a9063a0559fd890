"""Migrations: they build exactly the models' schema, old schemas are refused with the fix,
and best() is an index range scan."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from records_factory import H100, random_batch, workload

from tunefleet.database import DatabaseError, RecordStore, SchemaError, SchemaTooOldError
from tunefleet.database import schema as db_schema
from tunefleet.database.engine import EngineOptions, make_engine
from tunefleet.database.models import Base


def test_migrations_build_exactly_the_models(db_url: str) -> None:
    RecordStore.open(db_url).close()
    engine = make_engine(db_url, EngineOptions())
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            inspector = sa.inspect(conn)
            indexes = {ix["name"] for ix in inspector.get_indexes("tuning_records")}
    finally:
        engine.dispose()
    assert diff == []
    assert {"ix_tuning_records_best", "ix_tuning_records_pair_trace"} <= indexes


def test_an_old_schema_is_refused_until_migrated(db_url: str) -> None:
    engine = make_engine(db_url, EngineOptions(), create_dir=True)
    try:
        assert db_schema.upgrade(engine, "0001") == (None, "0001")
    finally:
        engine.dispose()
    with pytest.raises(SchemaTooOldError, match="tunefleet db migrate"):
        RecordStore.open(db_url)
    assert RecordStore.migrate(db_url) == ("0001", db_schema.head_revision())
    with RecordStore.open(db_url, create=False) as store:
        assert store.revision() == db_schema.head_revision()
    assert RecordStore.migrate(db_url) == (db_schema.head_revision(),) * 2


def test_records_of_revision_0002_migrate_unflagged_and_keep_answering(db_url: str) -> None:
    engine = make_engine(db_url, EngineOptions(), create_dir=True)
    w = workload(0)
    try:
        db_schema.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO targets (id, kind, fingerprint, device, arch, details) "
                    "VALUES (1, 'cuda', :fp, 'H100', 'sm_90', '{}')"
                ),
                {"fp": H100.fingerprint},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO workloads (id, key, op, shape, dtype, ir_json) "
                    "VALUES (1, :key, 'dense', '{}', 'float16', '{}')"
                ),
                {"key": w.key},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO tuning_records (id, workload_id, target_id, trace_json, "
                    "trace_hash, status, timings_ms, median_ms, error_msg, space_version, "
                    "created_at, uid) VALUES (7, 1, 1, '{}', 'h', 'ok', '[0.5, 0.5, 0.5]', 0.5, "
                    "'', '', CURRENT_TIMESTAMP, 'u7')"
                )
            )
    finally:
        engine.dispose()
    assert RecordStore.migrate(db_url) == ("0002", db_schema.head_revision())
    with RecordStore.open(db_url, create=False) as store:
        [record] = store.best(w.key, H100.fingerprint)
        assert (record.id, record.origin, record.invalid_reason) == (7, None, None)


def test_a_database_without_the_schema_is_not_created_unless_asked(db_url: str) -> None:
    with pytest.raises(DatabaseError, match="db init"):
        RecordStore.open(db_url, create=False)


def test_a_revision_from_a_newer_tunefleet_is_named(db_url: str) -> None:
    RecordStore.open(db_url).close()
    engine = make_engine(db_url, EngineOptions())
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(SchemaError, match="upgrade tunefleet"):
        RecordStore.open(db_url)


@pytest.mark.postgres
def test_best_is_an_index_scan_on_postgresql(pg_schema_url: str) -> None:
    with RecordStore.open(pg_schema_url) as store:
        store.ensure_target(H100)
        for i in range(4):
            w = workload(i)
            store.ensure_workload(w)
            store.commit(random_batch(w, H100, 500, seed=i))
    engine = make_engine(pg_schema_url, EngineOptions())
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("ANALYZE tuning_records"))
            plan = "\n".join(
                conn.execute(
                    sa.text(
                        "EXPLAIN SELECT id, median_ms FROM tuning_records "
                        "WHERE workload_id = 2 AND target_id = 1 "
                        "AND status = 'ok' AND invalid_reason IS NULL "
                        "ORDER BY median_ms, id LIMIT 5"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()
    assert "ix_tuning_records_best" in plan
    assert "Seq Scan" not in plan and "Sort" not in plan


def test_best_uses_the_partial_index_on_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'plan.db'}"
    RecordStore.open(url).close()
    engine = make_engine(url, EngineOptions())
    try:
        with engine.connect() as conn:
            plan = " ".join(
                str(row[-1])
                for row in conn.execute(
                    sa.text(
                        "EXPLAIN QUERY PLAN SELECT id FROM tuning_records "
                        "WHERE workload_id = 2 AND target_id = 1 "
                        "AND status = 'ok' AND invalid_reason IS NULL "
                        "ORDER BY median_ms, id LIMIT 5"
                    )
                )
            )
    finally:
        engine.dispose()
    assert "ix_tuning_records_best" in plan
    assert "TEMP B-TREE" not in plan


def test_open_waits_out_a_lock_held_past_the_busy_timeout(tmp_path) -> None:
    """A new SQLite file locked by another writer for longer than the busy timeout still
    opens once the lock goes: the opener retries instead of failing with 'locked'."""
    import sqlite3
    import threading

    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(0.6, holder.rollback)
    release.start()
    try:
        options = EngineOptions(busy_timeout_s=0.05)
        with RecordStore.open(f"sqlite:///{path}", options=options) as store:
            assert store.revision() == db_schema.head_revision()
    finally:
        release.join()
        holder.close()
