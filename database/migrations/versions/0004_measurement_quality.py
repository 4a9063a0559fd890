"""Keep how a record was measured and allow the `noisy` status.

A timing taken while other processes held the worker's cores can be several times too slow
and would otherwise be stored as the trace's time for good. The runner now re-times such a
measurement and, if it never gets a clean one, records the trial as `noisy` (no median, so it
is never best and is measured again later). Each record also keeps the spread of its repeats
(interquartile range / median) and how many timing attempts it took, so a reader can tell a
well-measured time from a lucky one. Both are null for records made before this revision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUS_CHECK = "status IN ('ok', 'build_error', 'run_error', 'timeout', 'wrong_result')"
STATUS_CHECK = "status IN ('ok', 'build_error', 'run_error', 'timeout', 'wrong_result', 'noisy')"


def upgrade() -> None:
    with op.batch_alter_table("tuning_records") as batch:
        batch.add_column(sa.Column("spread", sa.Float(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=True))
        batch.drop_constraint("ck_tuning_records_status", type_="check")
        batch.create_check_constraint("ck_tuning_records_status", STATUS_CHECK)


def downgrade() -> None:
    op.execute("DELETE FROM tuning_records WHERE status = 'noisy'")
    with op.batch_alter_table("tuning_records") as batch:
        batch.drop_constraint("ck_tuning_records_status", type_="check")
        batch.create_check_constraint("ck_tuning_records_status", OLD_STATUS_CHECK)
        batch.drop_column("attempts")
        batch.drop_column("spread")
