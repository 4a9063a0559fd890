"""Create targets, workloads and tuning records: the store's first tables.

Every trial is one row of tuning_records, failures included. A partial index over ok records
ordered by (workload, target, median, id) makes best() an index range scan; a second index by
trace hash serves de-duplication and history. Records carry a uid so that imports and merges
are idempotent across databases.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUS_CHECK = "status IN ('ok', 'build_error', 'run_error', 'timeout', 'wrong_result')"


def upgrade() -> None:
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("fingerprint", sa.String(255), nullable=False),
        sa.Column("device", sa.String(255), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_targets"),
        sa.UniqueConstraint("fingerprint", name="uq_targets_fingerprint"),
    )
    op.create_table(
        "workloads",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("op", sa.String(128), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("ir_json", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workloads"),
        sa.UniqueConstraint("key", name="uq_workloads_key"),
    )
    op.create_table(
        "tuning_records",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("workload_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("trace_json", sa.Text(), nullable=False),
        sa.Column("trace_hash", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("timings_ms", sa.JSON(), nullable=False),
        sa.Column("median_ms", sa.Float(), nullable=True),
        sa.Column("error_msg", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("space_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tuning_records"),
        sa.UniqueConstraint("uid", name="uq_tuning_records_uid"),
        sa.CheckConstraint(STATUS_CHECK, name="ck_tuning_records_status"),
        sa.CheckConstraint(
            "status <> 'ok' OR median_ms IS NOT NULL", name="ck_tuning_records_ok_has_median"
        ),
        sa.ForeignKeyConstraint(
            ["workload_id"], ["workloads.id"], name="fk_tuning_records_workload_id_workloads"
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name="fk_tuning_records_target_id_targets"
        ),
    )
    op.create_index(
        "ix_tuning_records_best",
        "tuning_records",
        ["workload_id", "target_id", "median_ms", "id"],
        postgresql_where=sa.text("status = 'ok'"),
        sqlite_where=sa.text("status = 'ok'"),
    )
    op.create_index(
        "ix_tuning_records_pair_trace",
        "tuning_records",
        ["workload_id", "target_id", "trace_hash"],
    )
    op.create_index("ix_tuning_records_job_id", "tuning_records", ["job_id"])


def downgrade() -> None:
    op.drop_table("tuning_records")
    op.drop_table("workloads")
    op.drop_table("targets")
