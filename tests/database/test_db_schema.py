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
                        "WHERE workload_id = 2 AND target_id = 1 AND status = 'ok' "
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
                        "WHERE workload_id = 2 AND target_id = 1 AND status = 'ok' "
                        "ORDER BY median_ms, id LIMIT 5"
                    )
                )
            )
    finally:
        engine.dispose()
    assert "ix_tuning_records_best" in plan
    assert "TEMP B-TREE" not in plan
