"""Alembic environment, configured from Python (no alembic.ini).

The caller (tunefleet.database.schema) opens a connection, takes the migration lock and
passes the connection in `config.attributes["connection"]`; migrations run inside its
transaction, so a failed upgrade leaves the schema untouched (DDL is transactional on both
PostgreSQL and SQLite).
"""

from __future__ import annotations

from alembic import context

from tunefleet.database.models import Base


def run_migrations_online() -> None:
    """Run the migrations on the connection the caller handed over."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "tunefleet migrations run through tunefleet.database.schema (`tunefleet db migrate`)"
        )
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("tunefleet migrations need a live connection; offline SQL is not supported")
run_migrations_online()
