"""Frozen records exchanged at the store's boundary; database rows never leave the store.

A workload is identified by its structural key (a hex hash of its PrimFunc), a target by its
fingerprint; both are plain strings here, so the store does not depend on the IR.

The fields of what the store keeps are declared once, here: TargetInfo, WorkloadInfo and a
trial's NewRecord, CommittedRecord and TuningRecord. A field's name is its column (in
`targets`, `workloads` or `tuning_records`) and its key in the exchange format, its
annotation gives its JSON type and nullability, and its metadata its SQL type (`column`) and
whether it means anything in another database (`local`). The ORM tables' data columns, the
store's row mappers, the JSON-lines format and `to_dict` are all derived from them.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
from sqlalchemy.types import TypeEngine

from tunefleet.database.errors import InvalidRecordError

# "noisy": checked correct, but every timing ran under contention; no median, retried later
STATUSES = ("ok", "build_error", "run_error", "timeout", "wrong_result", "noisy")
JOB_STATUSES = ("pending", "running", "done", "failed", "cancelled")

SQL_TYPE = "tunefleet.sql_type"  # field metadata: the type of its table column
LOCAL = "tunefleet.local"  # field metadata: meaningless in another database, never exported
ADDED = "tunefleet.added"  # field metadata: added to the exchange format later, may be absent


def column(
    sql_type: TypeEngine[Any], *, local: bool = False, added: bool = False
) -> dict[str, Any]:
    """Field metadata: the field is kept in the table's column of its name, of `sql_type`.

    `local` marks a value that is only valid in its own database (a job id): exports and
    merges leave it out. `added` marks a nullable field newer than the exchange format's
    version: an export leaves it out when None and an import reads it as None when absent, so
    files written before it existed still import and export to the same lines.
    """
    return {SQL_TYPE: sql_type, LOCAL: local, ADDED: added}


@functools.cache
def added_fields(cls: type) -> frozenset[str]:
    """The names of the fields of `cls` that an exchanged line may leave out (None)."""
    return frozenset(f.name for f in fields(cls) if f.metadata.get(ADDED, False))


class StoredField(NamedTuple):
    """A record field as a table column: its name, SQL type and nullability."""

    name: str
    sql_type: TypeEngine[Any]
    nullable: bool


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a record class's fields (they are strings in the source)."""
    return typing.get_type_hints(cls)


@functools.cache
def stored_fields(cls: type) -> tuple[StoredField, ...]:
    """The fields of `cls` kept in a table column of the same name, in field order.

    A field may be null in the database exactly when its annotation admits None.
    """
    hints = field_types(cls)
    return tuple(
        StoredField(f.name, f.metadata[SQL_TYPE], _admits_none(hints[f.name]))
        for f in fields(cls)
        if SQL_TYPE in f.metadata
    )


@functools.cache
def exchanged_fields(cls: type) -> tuple[str, ...]:
    """The names of the fields of `cls` that travel between databases, in field order."""
    return tuple(f.name for f in fields(cls) if not f.metadata.get(LOCAL, False))


def json_dict(record: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """A JSON-ready dict of a frozen record's fields (all of them, or `names`), in field order.

    Sequences become lists, mappings dicts and times ISO 8601 text.
    """
    if names is None:
        names = field_names(type(record))
    return {name: _json_value(getattr(record, name)) for name in names}


@functools.cache
def field_names(cls: type) -> tuple[str, ...]:
    """The names of the fields of a record class, in field order."""
    return tuple(f.name for f in fields(cls))


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, tuple | list):
        return list(value)
    return value


def _admits_none(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) and type(None) in typing.get_args(hint)


@dataclass(frozen=True)
class TargetInfo:
    """A fingerprinted device + compiler; every record belongs to exactly one target."""

    kind: str = field(metadata=column(String(32)))  # "cuda" or "c"
    fingerprint: str = field(metadata=column(String(255)))
    device: str = field(metadata=column(String(255)))
    arch: str = field(metadata=column(String(64)))
    # compiler versions, memory, ...; left out of the hash so targets can key dicts
    details: Mapping[str, Any] = field(default_factory=dict, hash=False, metadata=column(JSON()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the export format's `target` line without its type tag)."""
        return json_dict(self)


@dataclass(frozen=True)
class WorkloadInfo:
    """A tensor program identified by its structural key, with its IR kept as JSON text."""

    key: str = field(metadata=column(String(128)))
    op: str = field(metadata=column(String(128)))
    shape: Mapping[str, Any] = field(hash=False, metadata=column(JSON()))
    dtype: str = field(metadata=column(String(32)))
    ir_json: str = field(metadata=column(Text()))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the export format's `workload` line without its type tag)."""
        return json_dict(self)


@dataclass(frozen=True)
class NewRecord:
    """One trial to commit: a trace measured on a target, failures included.

    The workload and target are stored as ids of their rows, so these two fields have no
    column of their own.
    """

    workload_key: str
    target_fingerprint: str
    trace_json: str = field(metadata=column(Text()))
    trace_hash: str = field(metadata=column(String(128)))
    status: str = field(metadata=column(String(16)))
    timings_ms: Sequence[float] = field(default=(), metadata=column(JSON()))
    median_ms: float | None = field(default=None, metadata=column(Float()))
    error_msg: str = field(default="", metadata=column(Text()))
    job_id: int | None = field(default=None, metadata=column(Integer(), local=True))
    space_version: str = field(default="", metadata=column(String(64)))
    # how the time was taken: the repeats' interquartile range / median, and the timing
    # attempts it needed (more than 1: the first ones were noisy); None before revision 0004
    spread: float | None = field(default=None, metadata=column(Float(), added=True))
    attempts: int | None = field(default=None, metadata=column(Integer(), added=True))

    def __post_init__(self) -> None:
        timings = tuple(float(t) for t in self.timings_ms)
        if not all(math.isfinite(t) for t in timings):
            raise InvalidRecordError(f"timings_ms must be finite numbers (got {timings!r})")
        object.__setattr__(self, "timings_ms", timings)
        validate_measurement(self.status, self.median_ms)


@dataclass(frozen=True)
class RecordUid:
    """The global id a committed record keeps in every database it is copied to."""

    uid: str = field(metadata=column(String(32)))


@dataclass(frozen=True)
class RecordRowId:
    """The id of a record's row in one database."""

    id: int = field(metadata={LOCAL: True})


@dataclass(frozen=True)
class CommittedRecord(NewRecord, RecordUid):
    """A committed trial as any database knows it: its uid, the measurement and the time it
    was first committed. One line of the exchange format carries its exchanged fields (all
    but the job id); imports and merges skip uids already present."""

    created_at: datetime = field(kw_only=True, metadata=column(DateTime(timezone=True)))


@dataclass(frozen=True)
class TuningRecord(CommittedRecord, RecordRowId):
    """A stored trial: a NewRecord plus its id, its global uid and the time it was committed.

    Fields in order: id, uid, the NewRecord's, created_at (UTC), origin, invalid_reason. The
    last two are local to this database: `origin` says where an imported or merged record came
    from (None: committed here), `invalid_reason` why `tunefleet db verify` found it unsound
    (None: not flagged); best() never returns a flagged record.
    """

    origin: str | None = field(default=None, kw_only=True, metadata=column(Text(), local=True))
    invalid_reason: str | None = field(
        default=None, kw_only=True, metadata=column(Text(), local=True)
    )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the time in ISO 8601 (UTC)."""
        return json_dict(self)


@dataclass(frozen=True)
class NewTask:
    """A tuning task of a job: one workload, its weight in the model and its trial budget."""

    workload_key: str
    weight: float = 1.0
    budget: int = 0


@dataclass(frozen=True)
class JobInfo:
    """A tuning job of the coordinator: a model tuned for one target within a trial budget."""

    id: int
    name: str
    model: str
    target_fingerprint: str
    budget: int
    status: str
    config: Mapping[str, Any] = field(hash=False)
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TaskInfo:
    """A task of a job with its progress: trials done and the best median so far."""

    id: int
    job_id: int
    workload_key: str
    weight: float
    budget: int
    trials_done: int
    best_ms: float | None
    status: str
    updated_at: datetime


@dataclass(frozen=True)
class PairSummary:
    """Records of one (workload, target) pair: how many, how many ok, and the best median."""

    workload_key: str
    op: str
    dtype: str
    shape: Mapping[str, Any]
    target_fingerprint: str
    records: int
    ok_records: int
    best_ms: float | None


@dataclass(frozen=True)
class StoreStats:
    """Counts over the whole store, for `tunefleet db stats` and dashboards."""

    url: str  # masked
    backend: str
    revision: str | None
    targets: int
    workloads: int
    records: int
    by_status: Mapping[str, int]
    jobs: int
    tasks: int
    records_per_target: Mapping[str, int]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return json_dict(self)


def validate_measurement(status: str, median_ms: float | None) -> None:
    """Reject a status outside STATUSES and an ok record without a finite, non-negative median."""
    if status not in STATUSES:
        raise InvalidRecordError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if status == "ok":
        if median_ms is None or not math.isfinite(median_ms) or median_ms < 0:
            raise InvalidRecordError(
                f"an ok record needs a finite, non-negative median_ms (got {median_ms!r})"
            )
    elif median_ms is not None and not math.isfinite(median_ms):
        raise InvalidRecordError(f"median_ms must be finite or None (got {median_ms!r})")
