"""SQLAlchemy 2.0 tables of the record store; every constraint and index has a fixed name.

Migrations in `migrations/versions` create these tables; a test checks that a database at
head matches this metadata exactly. Rows are turned into frozen records by the store. The data
columns of targets, workloads and tuning_records come from the fields of the frozen records
in records.py; this module adds their keys, constraints and indexes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tunefleet.database.records import TargetInfo, TuningRecord, WorkloadInfo, stored_fields

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUS_CHECK = "status IN ('ok', 'build_error', 'run_error', 'timeout', 'wrong_result', 'noisy')"
JOB_STATUS_CHECK = "status IN ('pending', 'running', 'done', 'failed', 'cancelled')"
# The records best() can answer with: ok and not flagged by `tunefleet db verify`.
BEST_WHERE = "status = 'ok' AND invalid_reason IS NULL"

# SQLite only aliases rowid for a column declared exactly INTEGER PRIMARY KEY.
RecordId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    """Declarative base holding the shared metadata and its naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def data_columns(cls: type) -> list[Column[Any]]:
    """One column per stored field of the frozen record class `cls`, named like the field."""
    return [Column(f.name, f.sql_type, nullable=f.nullable) for f in stored_fields(cls)]


class Target(Base):
    """A device + compiler identified by its fingerprint; its columns are TargetInfo's fields."""

    __table__ = Table(
        "targets",
        Base.metadata,
        Column("id", Integer, primary_key=True),
        *data_columns(TargetInfo),
        UniqueConstraint("fingerprint"),
    )


class Workload(Base):
    """A tensor program identified by its structural key, with its IR as JSON text; its columns
    are WorkloadInfo's fields."""

    __table__ = Table(
        "workloads",
        Base.metadata,
        Column("id", Integer, primary_key=True),
        *data_columns(WorkloadInfo),
        UniqueConstraint("key"),
    )


class Record(Base):
    """One trial. Its data columns are the stored fields of records.TuningRecord (one column a
    field, of the same name). `job_id` is informational and has no foreign key: records
    outlive jobs and travel between databases, where job ids mean nothing."""

    __table__ = Table(
        "tuning_records",
        Base.metadata,
        Column("id", RecordId, primary_key=True),
        Column("workload_id", ForeignKey("workloads.id"), nullable=False),
        Column("target_id", ForeignKey("targets.id"), nullable=False),
        *data_columns(TuningRecord),
        UniqueConstraint("uid"),
        CheckConstraint(STATUS_CHECK, name="status"),
        CheckConstraint("status <> 'ok' OR median_ms IS NOT NULL", name="ok_has_median"),
        # best(): an index range scan over the sound ok records of one (workload, target) in
        # time order; records `db verify` flagged are left out of it.
        Index(
            "ix_tuning_records_best",
            "workload_id",
            "target_id",
            "median_ms",
            "id",
            postgresql_where=text(BEST_WHERE),
            sqlite_where=text(BEST_WHERE),
        ),
        # history() and has_measured(): every trial of a pair, found by trace hash.
        Index("ix_tuning_records_pair_trace", "workload_id", "target_id", "trace_hash"),
        Index("ix_tuning_records_job_id", "job_id"),
    )


class Job(Base):
    """A coordinator job: one model tuned on one target within a trial budget."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(JOB_STATUS_CHECK, name="status"),
        CheckConstraint("budget >= 0", name="budget_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    model: Mapped[str] = mapped_column(String(255))
    target_id: Mapped[int] = mapped_column(ForeignKey("targets.id"))
    budget: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Task(Base):
    """A workload of a job with its weight in the model, its budget and its progress."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("job_id", "workload_id"),
        CheckConstraint(JOB_STATUS_CHECK, name="status"),
        CheckConstraint("trials_done >= 0", name="trials_non_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    workload_id: Mapped[int] = mapped_column(ForeignKey("workloads.id"))
    weight: Mapped[float] = mapped_column(Float)
    budget: Mapped[int] = mapped_column(Integer)
    trials_done: Mapped[int] = mapped_column(Integer)
    best_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
