"""Keep where an imported record came from, and let `db verify` flag unsound records.

`origin` says which file (and the database it was exported from) or which merged database an
imported record came from; NULL means it was committed here. `invalid_reason` is set by
`tunefleet db verify` on a record whose trace no longer replays on its workload or whose times
are implausible, so that a database poisoned before imports were verified stops answering
best() with it. The best() index leaves flagged records out, so best() stays a range scan.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ["workload_id", "target_id", "median_ms", "id"]


def upgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.add_column(sa.Column("origin", sa.Text(), nullable=True))
        batch.add_column(sa.Column("invalid_reason", sa.Text(), nullable=True))
    op.drop_index("ix_tuning_records_best", table_name="tuning_records")
    where = sa.text("status = 'ok' AND invalid_reason IS NULL")
    op.create_index(
        "ix_tuning_records_best",
        "tuning_records",
        COLUMNS,
        postgresql_where=where,
        sqlite_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_tuning_records_best", table_name="tuning_records")
    where = sa.text("status = 'ok'")
    op.create_index(
        "ix_tuning_records_best",
        "tuning_records",
        COLUMNS,
        postgresql_where=where,
        sqlite_where=where,
    )
    with op.batch_alter_table("tuning_records") as batch:
        batch.drop_column("invalid_reason")
        batch.drop_column("origin")
