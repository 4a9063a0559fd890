"""Frozen records exchanged at the store's boundary; database rows never leave the store.

A workload is identified by its structural key (a hex hash of its PrimFunc), a target by its
fingerprint; both are plain strings here, so the store does not depend on the IR.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tunefleet.database.errors import InvalidRecordError

STATUSES = ("ok", "build_error", "run_error", "timeout", "wrong_result")
JOB_STATUSES = ("pending", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class TargetInfo:
    """A fingerprinted device + compiler; every record belongs to exactly one target."""

    kind: str  # "cuda" or "c"
    fingerprint: str
    device: str
    arch: str
    # compiler versions, memory, ...; left out of the hash so targets can key dicts
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the export format's `target` line without its type tag)."""
        return {
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "device": self.device,
            "arch": self.arch,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class WorkloadInfo:
    """A tensor program identified by its structural key, with its IR kept as JSON text."""

    key: str
    op: str
    shape: Mapping[str, Any] = field(hash=False)
    dtype: str
    ir_json: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the export format's `workload` line without its type tag)."""
        return {
            "key": self.key,
            "op": self.op,
            "shape": dict(self.shape),
            "dtype": self.dtype,
            "ir_json": self.ir_json,
        }


@dataclass(frozen=True)
class NewRecord:
    """One trial to commit: a trace measured on a target, failures included."""

    workload_key: str
    target_fingerprint: str
    trace_json: str
    trace_hash: str
    status: str
    timings_ms: Sequence[float] = ()
    median_ms: float | None = None
    error_msg: str = ""
    job_id: int | None = None
    space_version: str = ""

    def __post_init__(self) -> None:
        timings = tuple(float(t) for t in self.timings_ms)
        if not all(math.isfinite(t) for t in timings):
            raise InvalidRecordError(f"timings_ms must be finite numbers (got {timings!r})")
        object.__setattr__(self, "timings_ms", timings)
        validate_measurement(self.status, self.median_ms)


@dataclass(frozen=True)
class TuningRecord:
    """A stored trial: a NewRecord plus its id, its global uid and the time it was committed."""

    id: int
    uid: str
    workload_key: str
    target_fingerprint: str
    trace_json: str
    trace_hash: str
    status: str
    timings_ms: tuple[float, ...]
    median_ms: float | None
    error_msg: str
    job_id: int | None
    space_version: str
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict with the time in ISO 8601 (UTC)."""
        return {
            "id": self.id,
            "uid": self.uid,
            "workload_key": self.workload_key,
            "target_fingerprint": self.target_fingerprint,
            "trace_json": self.trace_json,
            "trace_hash": self.trace_hash,
            "status": self.status,
            "timings_ms": list(self.timings_ms),
            "median_ms": self.median_ms,
            "error_msg": self.error_msg,
            "job_id": self.job_id,
            "space_version": self.space_version,
            "created_at": self.created_at.isoformat(),
        }


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
        return {
            "url": self.url,
            "backend": self.backend,
            "revision": self.revision,
            "targets": self.targets,
            "workloads": self.workloads,
            "records": self.records,
            "by_status": dict(self.by_status),
            "jobs": self.jobs,
            "tasks": self.tasks,
            "records_per_target": dict(self.records_per_target),
        }


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
