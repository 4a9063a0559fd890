"""The tuning-record store: SQLAlchemy models, Alembic migrations and the record API.

from tunefleet.database import RecordStore, NewRecord
with RecordStore.open(resolve_url(None, os.environ)) as store:
    store.commit([...]); store.best(workload_key, target_fingerprint, k=3)
"""

from tunefleet.database.checks import Verifier, timings_check
from tunefleet.database.engine import EngineOptions
from tunefleet.database.errors import (
    AuthenticationError,
    DatabaseError,
    DatabaseUnreachableError,
    ImportFileError,
    InvalidRecordError,
    SchemaError,
    SchemaTooOldError,
    UnknownKeyError,
)
from tunefleet.database.records import (
    JOB_STATUSES,
    STATUSES,
    CommittedRecord,
    JobInfo,
    NewRecord,
    NewTask,
    PairSummary,
    StoreStats,
    TargetInfo,
    TaskInfo,
    TuningRecord,
    WorkloadInfo,
)
from tunefleet.database.store import ImportResult, RecordStore, VerifyResult
from tunefleet.database.urls import default_url, mask_url, normalize_url, resolve_url

__all__ = [
    "JOB_STATUSES",
    "STATUSES",
    "AuthenticationError",
    "CommittedRecord",
    "DatabaseError",
    "DatabaseUnreachableError",
    "EngineOptions",
    "ImportFileError",
    "ImportResult",
    "InvalidRecordError",
    "JobInfo",
    "NewRecord",
    "NewTask",
    "PairSummary",
    "RecordStore",
    "SchemaError",
    "SchemaTooOldError",
    "StoreStats",
    "TargetInfo",
    "TaskInfo",
    "TuningRecord",
    "UnknownKeyError",
    "Verifier",
    "VerifyResult",
    "WorkloadInfo",
    "default_url",
    "mask_url",
    "normalize_url",
    "resolve_url",
    "timings_check",
]
