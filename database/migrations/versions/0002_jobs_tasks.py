"""Add jobs and tasks so the coordinator can keep its work and progress in the shared store.

A job tunes one model on one target within a trial budget; each task is one workload of the
job with its weight in the model, its budget, the trials done and the best median so far.
Tasks go with their job (ON DELETE CASCADE); records keep only a plain job id because they
outlive jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_STATUS_CHECK = "status IN ('pending', 'running', 'done', 'failed', 'cancelled')"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.CheckConstraint(JOB_STATUS_CHECK, name="ck_jobs_status"),
        sa.CheckConstraint("budget >= 0", name="ck_jobs_budget_non_negative"),
        sa.ForeignKeyConstraint(["target_id"], ["targets.id"], name="fk_jobs_target_id_targets"),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("workload_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("budget", sa.Integer(), nullable=False),
        sa.Column("trials_done", sa.Integer(), nullable=False),
        sa.Column("best_ms", sa.Float(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.UniqueConstraint("job_id", "workload_id", name="uq_tasks_job_id_workload_id"),
        sa.CheckConstraint(JOB_STATUS_CHECK, name="ck_tasks_status"),
        sa.CheckConstraint("trials_done >= 0", name="ck_tasks_trials_non_negative"),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_tasks_job_id_jobs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workload_id"], ["workloads.id"], name="fk_tasks_workload_id_workloads"
        ),
    )


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("jobs")
