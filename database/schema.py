"""Alembic, configured from Python: head and current revisions, checks and upgrades.

The migration scripts ship inside the package (tunefleet.database.migrations), so this works
from an installed wheel with no alembic.ini. Upgrades run under a lock (an advisory lock on
PostgreSQL, BEGIN IMMEDIATE on SQLite) so that many workers opening a new database at once
migrate it exactly once.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from tunefleet.database import migrations
from tunefleet.database.engine import WRITE_OPTION
from tunefleet.database.errors import SchemaError, SchemaTooOldError

MIGRATION_LOCK_KEY = 7_265_414_937_201  # pg_advisory_xact_lock key for schema upgrades


def alembic_config() -> Config:
    """An Alembic Config pointing at the packaged migration scripts."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    return config


def head_revision() -> str:
    """The newest revision this code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def known_revisions() -> list[str]:
    """All revisions of this code, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


def current_revision(conn: Connection) -> str | None:
    """The revision a database is at, or None if it has never been migrated."""
    return MigrationContext.configure(conn).get_current_revision()


def has_tunefleet_tables(conn: Connection) -> bool:
    """True if the tuning-record table exists (a schema from this project)."""
    return inspect(conn).has_table("tuning_records")


def check_revision(revision: str | None, masked_url: str) -> None:
    """Raise a SchemaError unless `revision` is head, saying what the user should run."""
    head = head_revision()
    if revision == head:
        return
    if revision is None:
        raise SchemaError(
            f"{masked_url} has no tunefleet schema; run 'tunefleet db init --db URL' first"
        )
    if revision in known_revisions():
        raise SchemaTooOldError(
            f"the schema of {masked_url} is at revision {revision}, older than {head}; "
            "run 'tunefleet db migrate --db URL' to upgrade it"
        )
    raise SchemaError(
        f"the schema of {masked_url} is at revision {revision}, which this tunefleet does not "
        f"know (newest is {head}); upgrade tunefleet"
    )


def upgrade(engine: Engine, to: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the database to `to` under the migration lock; returns (before, after)."""
    config = alembic_config()
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            before = current_revision(conn)
            if before is None and has_tunefleet_tables(conn):
                raise SchemaError(
                    "the database has tunefleet tables but no schema revision; "
                    "it was not created by 'tunefleet db init'"
                )
            if before is not None and before not in known_revisions():
                raise SchemaError(
                    f"the database is at revision {before}, which this tunefleet does not know; "
                    "upgrade tunefleet"
                )
            config.attributes["connection"] = conn
            command.upgrade(config, to)
            after = current_revision(conn)
    return before, after
