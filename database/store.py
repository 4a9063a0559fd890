"""RecordStore: the API every package uses to keep and query tuning records.

All queries are per (workload, target): a record measured on one target never answers for
another. Rows become frozen records (records.py) before they leave this module, and every
driver error leaves as a DatabaseError with the password masked.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Row,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from tunefleet.database import jsonl, schema
from tunefleet.database.checks import Verifier, timings_check
from tunefleet.database.engine import (
    WRITE_OPTION,
    EngineOptions,
    is_locked_error,
    make_engine,
    sqlite_file_missing,
    translate,
)
from tunefleet.database.errors import (
    DatabaseError,
    DatabaseUnreachableError,
    ImportFileError,
    InvalidRecordError,
    UnknownKeyError,
)
from tunefleet.database.models import Job, Record, Target, Task, Workload
from tunefleet.database.records import (
    JOB_STATUSES,
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
    exchanged_fields,
    field_names,
    json_dict,
    stored_fields,
)
from tunefleet.database.urls import mask_url, normalize_url

P = ParamSpec("P")
T = TypeVar("T")

TARGETS: Table = Target.__table__  # type: ignore[assignment]
WORKLOADS: Table = Workload.__table__  # type: ignore[assignment]
RECORDS: Table = Record.__table__  # type: ignore[assignment]
JOBS: Table = Job.__table__  # type: ignore[assignment]
TASKS: Table = Task.__table__  # type: ignore[assignment]

IMPORT_CHUNK = 2000
LOCK_RETRIES = 20

# What best() and history() read: the row id and every column of a TuningRecord's fields.
_RECORD_COLUMNS = (RECORDS.c.id, *(RECORDS.c[f.name] for f in stored_fields(TuningRecord)))


# The records best() may answer with: ok, and not flagged by verify_records (models.BEST_WHERE).
SOUND_OK = (RECORDS.c.status == "ok") & RECORDS.c.invalid_reason.is_(None)


@dataclass(frozen=True)
class VerifyResult:
    """What verify_records found: records checked, those now flagged invalid (id, uid,
    workload key, target fingerprint, reason) and how many flags it set and cleared."""

    checked: int
    invalid: tuple[tuple[int, str, str, str, str], ...]
    flagged: int
    cleared: int


@dataclass(frozen=True)
class ImportResult:
    """What an import or merge added; records already present (same uid) are skipped."""

    targets_added: int
    workloads_added: int
    records_added: int
    records_skipped: int


def _translated(method: Callable[P, T]) -> Callable[P, T]:
    """Turn SQLAlchemy errors raised by a store method into DatabaseErrors."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as err:
            store = args[0]
            assert isinstance(store, RecordStore)
            raise translate(err, store._url) from None

    return wrapper


def _retry_locked(work: Callable[[], T]) -> T:
    """Run `work`, again after a short back-off while SQLite reports a lock the busy handler
    gave up on (it does so at once where waiting could deadlock); other errors pass through."""
    for attempt in range(LOCK_RETRIES):
        try:
            return work()
        except OperationalError as err:
            if not is_locked_error(err) or attempt == LOCK_RETRIES - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 2.0))
    raise AssertionError("unreachable")


class RecordStore:
    """The tuning-record store over one SQLite file or PostgreSQL database."""

    def __init__(self, engine: Engine, url: str) -> None:
        """Wrap an engine whose schema is already at head; use RecordStore.open normally."""
        self._engine = engine
        self._url = url
        self.url = mask_url(url)  # safe to print; the password stays in _url
        self._target_ids: dict[str, int] = {}
        self._workload_ids: dict[str, int] = {}

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls, url: str, *, create: bool = True, options: EngineOptions | None = None
    ) -> RecordStore:
        """Open the store at `url`; a new database is migrated to head if `create` is set.

        An existing database at an older revision raises SchemaTooOldError (run
        `tunefleet db migrate`); one without the schema raises SchemaError unless `create`.
        """
        url = normalize_url(url)
        missing = sqlite_file_missing(url)
        if missing is not None and not create:
            raise DatabaseUnreachableError(
                f"no database file at {missing}; run 'tunefleet db init --db URL' to create one"
            )
        engine = make_engine(url, options or EngineOptions(), create_dir=create)

        def settle_schema() -> None:
            with engine.connect() as conn:
                revision = schema.current_revision(conn)
            if revision is None and create:
                # decided under the migration lock: another opener may be creating the
                # schema right now, and its tables can appear after this read of the revision
                schema.upgrade(engine)
            else:
                schema.check_revision(revision, mask_url(url))

        try:
            # openers racing on a new SQLite file can see 'locked' past the busy handler
            _retry_locked(settle_schema)
        except SQLAlchemyError as err:
            engine.dispose()
            raise translate(err, url) from None
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, url)

    @staticmethod
    def migrate(url: str, options: EngineOptions | None = None) -> tuple[str | None, str | None]:
        """Create or upgrade the schema at `url` to head; returns (revision before, after)."""
        url = normalize_url(url)
        engine = make_engine(url, options or EngineOptions(), create_dir=True)
        try:
            return schema.upgrade(engine)
        except SQLAlchemyError as err:
            raise translate(err, url) from None
        finally:
            engine.dispose()

    def close(self) -> None:
        """Release the connections."""
        self._engine.dispose()

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._engine.dialect.name

    @_translated
    def revision(self) -> str | None:
        """The schema revision the database is at."""
        with self._engine.connect() as conn:
            return schema.current_revision(conn)

    # -- transactions ----------------------------------------------------------------------

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction, retrying while SQLite reports a lock."""

        def once() -> T:
            with self._engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
                with conn.begin():
                    return work(conn)

        return _retry_locked(once)

    def _insert(self, table: Table) -> Insert:
        """An INSERT that supports ON CONFLICT DO NOTHING on this dialect."""
        if self.backend == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # -- targets and workloads ---------------------------------------------------------------

    @_translated
    def ensure_target(self, target: TargetInfo) -> int:
        """Register a target (idempotent, race-free, keyed by fingerprint); returns its id."""
        if target.fingerprint in self._target_ids:
            return self._target_ids[target.fingerprint]
        target_id = self._write(lambda conn: self._upsert_target(conn, target)[0])
        self._target_ids[target.fingerprint] = target_id
        return target_id

    @_translated
    def ensure_workload(self, workload: WorkloadInfo) -> int:
        """Register a workload (idempotent, race-free, keyed by structural key); returns its id."""
        if workload.key in self._workload_ids:
            return self._workload_ids[workload.key]
        workload_id = self._write(lambda conn: self._upsert_workload(conn, workload)[0])
        self._workload_ids[workload.key] = workload_id
        return workload_id

    def _upsert_target(self, conn: Connection, target: TargetInfo) -> tuple[int, bool]:
        stmt = self._insert(TARGETS).values(json_dict(target))
        stmt = stmt.on_conflict_do_nothing(index_elements=["fingerprint"])
        new_id = conn.execute(stmt.returning(TARGETS.c.id)).scalar()
        if new_id is not None:
            return new_id, True
        query = select(TARGETS.c.id).where(TARGETS.c.fingerprint == target.fingerprint)
        return conn.execute(query).scalar_one(), False

    def _upsert_workload(self, conn: Connection, workload: WorkloadInfo) -> tuple[int, bool]:
        stmt = self._insert(WORKLOADS).values(json_dict(workload))
        stmt = stmt.on_conflict_do_nothing(index_elements=["key"])
        new_id = conn.execute(stmt.returning(WORKLOADS.c.id)).scalar()
        if new_id is not None:
            return new_id, True
        query = select(WORKLOADS.c.id).where(WORKLOADS.c.key == workload.key)
        return conn.execute(query).scalar_one(), False

    @_translated
    def get_target(self, fingerprint: str) -> TargetInfo | None:
        """The target with this fingerprint, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(TARGETS).where(TARGETS.c.fingerprint == fingerprint)).first()
        return _from_row(TargetInfo, row) if row is not None else None

    @_translated
    def get_workload(self, key: str) -> WorkloadInfo | None:
        """The workload with this structural key, or None."""
        with self._engine.connect() as conn:
            row = conn.execute(select(WORKLOADS).where(WORKLOADS.c.key == key)).first()
        return _from_row(WorkloadInfo, row) if row is not None else None

    @_translated
    def targets(self) -> list[TargetInfo]:
        """Every registered target, by fingerprint."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(TARGETS).order_by(TARGETS.c.fingerprint)).all()
        return [_from_row(TargetInfo, row) for row in rows]

    @_translated
    def workloads(self) -> list[WorkloadInfo]:
        """Every registered workload, by op then key."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(WORKLOADS).order_by(WORKLOADS.c.op, WORKLOADS.c.key)).all()
        return [_from_row(WorkloadInfo, row) for row in rows]

    def _lookup_ids(
        self, conn: Connection, table: Table, column: str, keys: Iterable[str]
    ) -> dict[str, int]:
        cache = self._target_ids if table is TARGETS else self._workload_ids
        wanted = set(keys)
        missing = [key for key in wanted if key not in cache]
        for start in range(0, len(missing), 500):
            chunk = missing[start : start + 500]
            col = table.c[column]
            for key, row_id in conn.execute(select(col, table.c.id).where(col.in_(chunk))):
                cache[key] = row_id
        return {key: cache[key] for key in wanted if key in cache}

    def _pair_ids(
        self, conn: Connection, workload_key: str, target_fingerprint: str
    ) -> tuple[int, int] | None:
        workloads = self._lookup_ids(conn, WORKLOADS, "key", [workload_key])
        targets = self._lookup_ids(conn, TARGETS, "fingerprint", [target_fingerprint])
        if workload_key not in workloads or target_fingerprint not in targets:
            return None
        return workloads[workload_key], targets[target_fingerprint]

    # -- records -----------------------------------------------------------------------------

    @_translated
    def commit(
        self, records: Sequence[NewRecord], fence: Callable[[], None] | None = None
    ) -> list[int]:
        """Store a batch of trials in one transaction; returns their ids in input order.

        Workloads and targets must be registered first (ensure_workload / ensure_target).
        `fence` is called inside the transaction, before the insert: whatever it raises (a
        writer whose lease was fenced out) rolls the batch back and propagates unchanged.
        """
        if not records:
            return []
        now = datetime.now(UTC)

        def work(conn: Connection) -> list[int]:
            workloads = self._lookup_ids(conn, WORKLOADS, "key", (r.workload_key for r in records))
            targets = self._lookup_ids(
                conn, TARGETS, "fingerprint", (r.target_fingerprint for r in records)
            )
            rows = []
            for record in records:
                if record.workload_key not in workloads:
                    raise UnknownKeyError(
                        f"workload {record.workload_key!r} is not registered; "
                        "call ensure_workload first"
                    )
                if record.target_fingerprint not in targets:
                    raise UnknownKeyError(
                        f"target {record.target_fingerprint!r} is not registered; "
                        "call ensure_target first"
                    )
                rows.append(
                    _record_row(
                        record,
                        workloads[record.workload_key],
                        targets[record.target_fingerprint],
                        uid=uuid.uuid4().hex,
                        created_at=now,
                    )
                )
            if fence is not None:
                fence()
            stmt = insert(RECORDS).returning(RECORDS.c.id, sort_by_parameter_order=True)
            return list(conn.execute(stmt, rows).scalars())

        return self._write(work)

    @_translated
    def best(self, workload_key: str, target_fingerprint: str, k: int = 1) -> list[TuningRecord]:
        """The k fastest ok records of a workload on a target (an index range scan). Records
        flagged invalid by verify_records, and `noisy` ones (timed under contention, with no
        median), are never returned."""
        if k < 1:
            raise InvalidRecordError(f"k must be at least 1 (got {k})")
        with self._engine.connect() as conn:
            pair = self._pair_ids(conn, workload_key, target_fingerprint)
            if pair is None:
                return []
            rows = conn.execute(
                select(*_RECORD_COLUMNS)
                .where(
                    RECORDS.c.workload_id == pair[0],
                    RECORDS.c.target_id == pair[1],
                    SOUND_OK,
                )
                .order_by(RECORDS.c.median_ms, RECORDS.c.id)
                .limit(k)
            ).all()
        return [_tuning_record(row, workload_key, target_fingerprint) for row in rows]

    @_translated
    def get_record(self, record_id: int, *, sound: bool = False) -> TuningRecord | None:
        """The record with this id, or None; with `sound`, only a record best() may answer
        with (ok, not flagged invalid), so a cached record id can be checked by primary key."""
        query = (
            select(WORKLOADS.c.key, TARGETS.c.fingerprint, *_RECORD_COLUMNS)
            .join(WORKLOADS, WORKLOADS.c.id == RECORDS.c.workload_id)
            .join(TARGETS, TARGETS.c.id == RECORDS.c.target_id)
            .where(RECORDS.c.id == record_id)
        )
        if sound:
            query = query.where(SOUND_OK)
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _tuning_record(row, row.key, row.fingerprint)

    @_translated
    def history(
        self,
        workload_key: str,
        target_fingerprint: str,
        limit: int | None = None,
        *,
        include_invalid: bool = False,
    ) -> list[TuningRecord]:
        """Every trial of a workload on a target in commit order (the latest `limit` if set).

        Records flagged invalid by verify_records are left out unless `include_invalid`, so a
        tuner loading its history never seeds its search with them.
        """
        with self._engine.connect() as conn:
            pair = self._pair_ids(conn, workload_key, target_fingerprint)
            if pair is None:
                return []
            query = (
                select(*_RECORD_COLUMNS)
                .where(RECORDS.c.workload_id == pair[0], RECORDS.c.target_id == pair[1])
                .order_by(RECORDS.c.id.desc())
            )
            if not include_invalid:
                query = query.where(RECORDS.c.invalid_reason.is_(None))
            if limit is not None:
                query = query.limit(limit)
            rows = conn.execute(query).all()
        return [_tuning_record(row, workload_key, target_fingerprint) for row in reversed(rows)]

    @_translated
    def has_measured(self, workload_key: str, target_fingerprint: str, trace_hash: str) -> bool:
        """True if this trace was already tried for the workload on the target: any status but
        `noisy`, whose trace is measured again."""
        with self._engine.connect() as conn:
            pair = self._pair_ids(conn, workload_key, target_fingerprint)
            if pair is None:
                return False
            found = conn.execute(
                select(RECORDS.c.id)
                .where(
                    RECORDS.c.workload_id == pair[0],
                    RECORDS.c.target_id == pair[1],
                    RECORDS.c.trace_hash == trace_hash,
                    RECORDS.c.status != "noisy",
                )
                .limit(1)
            ).first()
        return found is not None

    @_translated
    def measured_hashes(self, workload_key: str, target_fingerprint: str) -> set[str]:
        """Trace hashes already tried for the workload on the target (batch de-duplication);
        traces only ever measured `noisy` are left out, so they are measured again."""
        with self._engine.connect() as conn:
            pair = self._pair_ids(conn, workload_key, target_fingerprint)
            if pair is None:
                return set()
            hashes = conn.execute(
                select(RECORDS.c.trace_hash)
                .where(
                    RECORDS.c.workload_id == pair[0],
                    RECORDS.c.target_id == pair[1],
                    RECORDS.c.status != "noisy",
                )
                .distinct()
            ).scalars()
            return set(hashes)

    @_translated
    def stats(self) -> StoreStats:
        """Counts of targets, workloads, records by status, jobs and tasks."""
        with self._engine.connect() as conn:

            def count(table: Table) -> int:
                return conn.execute(select(func.count()).select_from(table)).scalar_one()

            by_status = dict(
                conn.execute(
                    select(RECORDS.c.status, func.count()).group_by(RECORDS.c.status)
                ).all()
            )
            per_target = dict(
                conn.execute(
                    select(TARGETS.c.fingerprint, func.count(RECORDS.c.id))
                    .join(RECORDS, RECORDS.c.target_id == TARGETS.c.id)
                    .group_by(TARGETS.c.fingerprint)
                ).all()
            )
            return StoreStats(
                url=self.url,
                backend=self.backend,
                revision=schema.current_revision(conn),
                targets=count(TARGETS),
                workloads=count(WORKLOADS),
                records=sum(by_status.values()),
                by_status=by_status,
                jobs=count(JOBS),
                tasks=count(TASKS),
                records_per_target=per_target,
            )

    @_translated
    def summaries(self, target_fingerprint: str | None = None) -> list[PairSummary]:
        """One line per (workload, target) with records: counts and the best median (of the
        records best() may return)."""
        ok = RECORDS.c.status == "ok"
        query = (
            select(
                WORKLOADS.c.key,
                WORKLOADS.c.op,
                WORKLOADS.c.dtype,
                WORKLOADS.c.shape,
                TARGETS.c.fingerprint,
                func.count(RECORDS.c.id),
                func.count(case((ok, RECORDS.c.id))),
                func.min(case((SOUND_OK, RECORDS.c.median_ms))),
            )
            .select_from(RECORDS)
            .join(WORKLOADS, WORKLOADS.c.id == RECORDS.c.workload_id)
            .join(TARGETS, TARGETS.c.id == RECORDS.c.target_id)
            .group_by(RECORDS.c.workload_id, RECORDS.c.target_id, WORKLOADS.c.id, TARGETS.c.id)
            .order_by(WORKLOADS.c.op, WORKLOADS.c.key, TARGETS.c.fingerprint)
        )
        if target_fingerprint is not None:
            query = query.where(TARGETS.c.fingerprint == target_fingerprint)
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [
            PairSummary(
                workload_key=row[0],
                op=row[1],
                dtype=row[2],
                shape=row[3],
                target_fingerprint=row[4],
                records=row[5],
                ok_records=row[6],
                best_ms=row[7],
            )
            for row in rows
        ]

    @_translated
    def prune(self, k: int, *, dry_run: bool = False) -> int:
        """Keep only the k fastest ok records of each (workload, target); returns rows deleted.

        Failures, records flagged invalid and slower trials are deleted too, so de-duplication
        forgets them. With
        `dry_run` nothing is deleted and the count of rows that would go is returned.
        """
        if k < 1:
            raise InvalidRecordError(f"prune keeps at least 1 record per pair (got k={k})")
        rank = (
            func.row_number()
            .over(
                partition_by=(RECORDS.c.workload_id, RECORDS.c.target_id),
                order_by=(RECORDS.c.median_ms, RECORDS.c.id),
            )
            .label("rank")
        )
        ranked = select(RECORDS.c.id, rank).where(SOUND_OK).subquery()
        keep = select(ranked.c.id).where(ranked.c.rank <= k)
        if dry_run:
            doomed = select(func.count()).select_from(RECORDS).where(RECORDS.c.id.not_in(keep))
            with self._engine.connect() as conn:
                return conn.execute(doomed).scalar_one()
        return self._write(
            lambda conn: conn.execute(delete(RECORDS).where(RECORDS.c.id.not_in(keep))).rowcount
        )

    # -- export, import, merge ----------------------------------------------------------------

    def iter_items(
        self,
        *,
        target_fingerprint: str | None = None,
        workload_key: str | None = None,
        include_invalid: bool = False,
    ) -> Iterator[jsonl.Item]:
        """Targets, workloads and records in export order, streamed (optionally filtered).

        Records flagged invalid stay behind unless `include_invalid`: exports and merges never
        carry them to another database.
        """
        try:
            with self._engine.connect() as conn:
                target_query = select(TARGETS).order_by(TARGETS.c.id)
                if target_fingerprint is not None:
                    target_query = target_query.where(TARGETS.c.fingerprint == target_fingerprint)
                workload_query = select(WORKLOADS).order_by(WORKLOADS.c.id)
                if workload_key is not None:
                    workload_query = workload_query.where(WORKLOADS.c.key == workload_key)
                targets = {r.id: _from_row(TargetInfo, r) for r in conn.execute(target_query)}
                workloads = {r.id: _from_row(WorkloadInfo, r) for r in conn.execute(workload_query)}
                yield from targets.values()
                yield from workloads.values()
                query = select(
                    RECORDS.c.workload_id, RECORDS.c.target_id, *_RECORD_COLUMNS
                ).order_by(RECORDS.c.id)
                if target_fingerprint is not None:
                    query = query.where(RECORDS.c.target_id.in_(list(targets)))
                if workload_key is not None:
                    query = query.where(RECORDS.c.workload_id.in_(list(workloads)))
                if not include_invalid:
                    query = query.where(RECORDS.c.invalid_reason.is_(None))
                stream = conn.execution_options(stream_results=True, yield_per=5000)
                for row in stream.execute(query):
                    yield _tuning_record(
                        row, workloads[row.workload_id].key, targets[row.target_id].fingerprint
                    )
        except SQLAlchemyError as err:
            raise translate(err, self._url) from None

    def export_jsonl(
        self,
        path: str | Path,
        *,
        target_fingerprint: str | None = None,
        workload_key: str | None = None,
    ) -> jsonl.EndLine:
        """Write the store (or one target's / workload's part) to a JSON-lines file whose
        header names this database (masked URL) as its source."""
        items = self.iter_items(target_fingerprint=target_fingerprint, workload_key=workload_key)
        return jsonl.write_file(path, items, source=self.url)

    @_translated
    def import_jsonl(
        self, path: str | Path, *, verify: Verifier | None = timings_check
    ) -> ImportResult:
        """Add the contents of an export file, all or nothing; known records are skipped.

        Every record must pass `verify` (by default the timing check; the CLI adds that the
        trace replays): the first that fails rejects the file with its line number, before
        anything is written. Imported records keep the file and its header as their origin.
        """
        name = str(path)

        def reject(number: int, record: CommittedRecord, reason: str) -> DatabaseError:
            return ImportFileError(name, number, f"record {record.uid}: {reason}")

        if verify is not None:
            _check_all(jsonl.read_file(path), verify, reject)
        origin = jsonl.describe_origin(path)
        return self._write(lambda conn: self._apply(conn, jsonl.read_file(path), origin))

    @_translated
    def merge_from(
        self, other_url: str, *, verify: Verifier | None = timings_check
    ) -> ImportResult:
        """Add every target, workload and record of another database (all or nothing).

        Every record must pass `verify`, as for import_jsonl; records the other database
        flagged invalid stay behind. Merged records keep the other database as their origin.
        """
        other_url = normalize_url(other_url)
        if other_url == self._url:
            raise DatabaseError(f"cannot merge {self.url} into itself")
        with RecordStore.open(other_url, create=False) as other:

            def reject(number: int, record: CommittedRecord, reason: str) -> DatabaseError:
                return DatabaseError(f"{other.url}: record {record.uid}: {reason}")

            def items() -> Iterator[tuple[int, jsonl.Item]]:
                return enumerate(other.iter_items(), start=1)

            if verify is not None:
                _check_all(items(), verify, reject)
            origin = f"merge from {other.url}"
            return self._write(lambda conn: self._apply(conn, items(), origin))

    @_translated
    def verify_records(
        self,
        verify: Verifier,
        *,
        target_fingerprint: str | None = None,
        workload_key: str | None = None,
    ) -> VerifyResult:
        """Check stored records again and flag those that fail `verify` (clearing the flag of
        those that now pass): best() stops returning a record committed or imported before
        it was checked. Records are read first and the flags written in one transaction."""
        targets: dict[str, TargetInfo] = {}
        workloads: dict[str, WorkloadInfo] = {}
        changes: list[dict[str, Any]] = []
        invalid: list[tuple[int, str, str, str, str]] = []
        checked = 0
        items = self.iter_items(
            target_fingerprint=target_fingerprint, workload_key=workload_key, include_invalid=True
        )
        for item in items:
            if isinstance(item, TargetInfo):
                targets[item.fingerprint] = item
            elif isinstance(item, WorkloadInfo):
                workloads[item.key] = item
            elif isinstance(item, TuningRecord):
                checked += 1
                target, workload = targets[item.target_fingerprint], workloads[item.workload_key]
                reason = verify(target, workload, item)
                if reason is not None:
                    invalid.append(
                        (item.id, item.uid, item.workload_key, item.target_fingerprint, reason)
                    )
                if reason != item.invalid_reason:
                    changes.append({"row_id": item.id, "reason": reason})

        def work(conn: Connection) -> None:
            stmt = (
                update(RECORDS)
                .where(RECORDS.c.id == bindparam("row_id"))
                .values(invalid_reason=bindparam("reason"))
            )
            conn.execute(stmt, changes)

        if changes:
            self._write(work)
        cleared = sum(1 for change in changes if change["reason"] is None)
        return VerifyResult(checked, tuple(invalid), len(changes) - cleared, cleared)

    def _apply(
        self, conn: Connection, items: Iterable[tuple[int, jsonl.Item]], origin: str
    ) -> ImportResult:
        target_ids: dict[str, int] = {}
        workload_ids: dict[str, int] = {}
        added = {"targets": 0, "workloads": 0, "records": 0, "seen": 0}
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if pending:
                stmt = self._insert(RECORDS).on_conflict_do_nothing(index_elements=["uid"])
                inserted = conn.execute(stmt.returning(RECORDS.c.id), pending).all()
                added["records"] += len(inserted)  # rows skipped as known return nothing
                pending.clear()

        for _, item in items:
            if isinstance(item, TargetInfo):
                target_ids[item.fingerprint], new = self._upsert_target(conn, item)
                added["targets"] += new
            elif isinstance(item, WorkloadInfo):
                workload_ids[item.key], new = self._upsert_workload(conn, item)
                added["workloads"] += new
            elif isinstance(item, CommittedRecord):
                if item.workload_key not in workload_ids:
                    raise DatabaseError(f"record {item.uid} names an undeclared workload")
                if item.target_fingerprint not in target_ids:
                    raise DatabaseError(f"record {item.uid} names an undeclared target")
                pending.append(
                    _record_row(
                        item,
                        workload_ids[item.workload_key],
                        target_ids[item.target_fingerprint],
                        exchanged_only=True,
                        origin=origin,
                    )
                )
                added["seen"] += 1
                if len(pending) >= IMPORT_CHUNK:
                    flush()
        flush()
        return ImportResult(
            targets_added=added["targets"],
            workloads_added=added["workloads"],
            records_added=added["records"],
            records_skipped=added["seen"] - added["records"],
        )

    # -- jobs and tasks -------------------------------------------------------------------------

    @_translated
    def create_job(
        self,
        name: str,
        model: str,
        target_fingerprint: str,
        budget: int,
        config: Mapping[str, Any] | None = None,
    ) -> int:
        """Create a pending job tuning `model` on a registered target; returns its id."""
        if budget < 0:
            raise InvalidRecordError(f"budget must be non-negative (got {budget})")
        now = datetime.now(UTC)

        def work(conn: Connection) -> int:
            targets = self._lookup_ids(conn, TARGETS, "fingerprint", [target_fingerprint])
            if target_fingerprint not in targets:
                raise UnknownKeyError(
                    f"target {target_fingerprint!r} is not registered; call ensure_target first"
                )
            stmt = insert(JOBS).values(
                name=name,
                model=model,
                target_id=targets[target_fingerprint],
                budget=budget,
                status="pending",
                config=dict(config or {}),
                created_at=now,
                updated_at=now,
            )
            return conn.execute(stmt.returning(JOBS.c.id)).scalar_one()

        return self._write(work)

    @_translated
    def add_tasks(self, job_id: int, tasks: Sequence[NewTask]) -> list[int]:
        """Add tasks (one per registered workload) to a job; returns their ids in input order."""
        if not tasks:
            return []
        now = datetime.now(UTC)

        def work(conn: Connection) -> list[int]:
            if conn.execute(select(JOBS.c.id).where(JOBS.c.id == job_id)).first() is None:
                raise UnknownKeyError(f"job {job_id} does not exist")
            workloads = self._lookup_ids(conn, WORKLOADS, "key", (t.workload_key for t in tasks))
            rows = []
            for task in tasks:
                if task.workload_key not in workloads:
                    raise UnknownKeyError(
                        f"workload {task.workload_key!r} is not registered; "
                        "call ensure_workload first"
                    )
                if task.budget < 0:
                    raise InvalidRecordError(f"task budget must be non-negative ({task})")
                rows.append(
                    {
                        "job_id": job_id,
                        "workload_id": workloads[task.workload_key],
                        "weight": float(task.weight),
                        "budget": task.budget,
                        "trials_done": 0,
                        "best_ms": None,
                        "status": "pending",
                        "updated_at": now,
                    }
                )
            stmt = insert(TASKS).returning(TASKS.c.id, sort_by_parameter_order=True)
            return list(conn.execute(stmt, rows).scalars())

        return self._write(work)

    @_translated
    def update_task_progress(
        self,
        task_id: int,
        *,
        trials_done: int,
        best_ms: float | None = None,
        status: str | None = None,
    ) -> TaskInfo:
        """Record a task's progress: trials done, best median (kept if None) and status."""
        if trials_done < 0:
            raise InvalidRecordError(f"trials_done must be non-negative (got {trials_done})")
        if status is not None and status not in JOB_STATUSES:
            raise InvalidRecordError(f"status {status!r} is not one of {', '.join(JOB_STATUSES)}")
        values: dict[str, Any] = {"trials_done": trials_done, "updated_at": datetime.now(UTC)}
        if best_ms is not None:
            values["best_ms"] = best_ms
        if status is not None:
            values["status"] = status

        def work(conn: Connection) -> None:
            done = conn.execute(update(TASKS).where(TASKS.c.id == task_id).values(**values))
            if done.rowcount != 1:
                raise UnknownKeyError(f"task {task_id} does not exist")

        self._write(work)
        return self._tasks(TASKS.c.id == task_id)[0]

    @_translated
    def set_job_status(self, job_id: int, status: str) -> None:
        """Move a job to another status (pending, running, done, failed, cancelled)."""
        if status not in JOB_STATUSES:
            raise InvalidRecordError(f"status {status!r} is not one of {', '.join(JOB_STATUSES)}")

        def work(conn: Connection) -> None:
            stmt = update(JOBS).where(JOBS.c.id == job_id)
            done = conn.execute(stmt.values(status=status, updated_at=datetime.now(UTC)))
            if done.rowcount != 1:
                raise UnknownKeyError(f"job {job_id} does not exist")

        self._write(work)

    @_translated
    def list_jobs(self) -> list[JobInfo]:
        """All jobs, newest first."""
        query = (
            select(JOBS, TARGETS.c.fingerprint)
            .join(TARGETS, TARGETS.c.id == JOBS.c.target_id)
            .order_by(JOBS.c.id.desc())
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_from_row(JobInfo, row, target_fingerprint=row.fingerprint) for row in rows]

    @_translated
    def get_job(self, job_id: int) -> JobInfo | None:
        """The job of that id, or None."""
        query = (
            select(JOBS, TARGETS.c.fingerprint)
            .join(TARGETS, TARGETS.c.id == JOBS.c.target_id)
            .where(JOBS.c.id == job_id)
        )
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _from_row(JobInfo, row, target_fingerprint=row.fingerprint)

    @_translated
    def set_job_config(self, job_id: int, config: Mapping[str, Any]) -> None:
        """Replace a job's config (the job loop keeps its elapsed time and notes there)."""

        def work(conn: Connection) -> None:
            stmt = update(JOBS).where(JOBS.c.id == job_id)
            done = conn.execute(stmt.values(config=dict(config), updated_at=datetime.now(UTC)))
            if done.rowcount != 1:
                raise UnknownKeyError(f"job {job_id} does not exist")

        self._write(work)

    @_translated
    def job_trial_counts(self, job_id: int) -> dict[str, int]:
        """Records committed with this job id, per workload key (what a job really measured,
        even when its task rows lag behind after a crash)."""
        query = (
            select(WORKLOADS.c.key, func.count())
            .select_from(RECORDS.join(WORKLOADS, WORKLOADS.c.id == RECORDS.c.workload_id))
            .where(RECORDS.c.job_id == job_id)
            .group_by(WORKLOADS.c.key)
        )
        with self._engine.connect() as conn:
            return {key: int(n) for key, n in conn.execute(query).all()}

    @_translated
    def list_tasks(self, job_id: int) -> list[TaskInfo]:
        """The tasks of a job in the order they were added."""
        return self._tasks(TASKS.c.job_id == job_id)

    def _tasks(self, where: Any) -> list[TaskInfo]:
        query = (
            select(TASKS, WORKLOADS.c.key)
            .join(WORKLOADS, WORKLOADS.c.id == TASKS.c.workload_id)
            .where(where)
            .order_by(TASKS.c.id)
        )
        with self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [_from_row(TaskInfo, row, workload_key=row.key) for row in rows]


def _check_all(
    items: Iterable[tuple[int, jsonl.Item]],
    verify: Verifier,
    reject: Callable[[int, CommittedRecord, str], DatabaseError],
) -> None:
    """Run `verify` on every record of `items` (numbered), each with the target and workload
    declared before it; the first failure raises `reject(number, record, reason)`.

    Items are read to the end first, so a damaged or truncated file is reported as such.
    """
    targets: dict[str, TargetInfo] = {}
    workloads: dict[str, WorkloadInfo] = {}
    failure: DatabaseError | None = None
    for number, item in items:
        if isinstance(item, TargetInfo):
            targets[item.fingerprint] = item
        elif isinstance(item, WorkloadInfo):
            workloads[item.key] = item
        elif isinstance(item, CommittedRecord) and failure is None:
            target = targets.get(item.target_fingerprint)
            workload = workloads.get(item.workload_key)
            if target is None or workload is None:
                what = "target" if target is None else "workload"
                failure = reject(number, item, f"names an undeclared {what}")
                continue
            reason = verify(target, workload, item)
            if reason is not None:
                failure = reject(number, item, reason)
    if failure is not None:
        raise failure


# -- row conversion ----------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes (stored as UTC); PostgreSQL gives aware ones."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _from_row(cls: type[T], row: Row[Any], **given: Any) -> T:
    """A frozen record of `cls` from a row: each field not `given` from the column of its name,
    times in UTC."""
    mapping = row._mapping
    values = {name: mapping[name] for name in field_names(cls) if name not in given}
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = _utc(value)
    return cls(**values, **given)


def _record_row(
    record: NewRecord,
    workload_id: int,
    target_id: int,
    *,
    exchanged_only: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """The tuning_records row of a record: each stored field in its column, the row ids of the
    workload and target, and `extra` columns the store sets (uid and time of a new record).

    `exchanged_only` leaves local fields (the job id) NULL: ids mean nothing in another database.
    """
    keep = exchanged_fields(type(record)) if exchanged_only else None
    row = {
        f.name: getattr(record, f.name) if keep is None or f.name in keep else None
        for f in stored_fields(type(record))
    }
    return {**row, **extra, "workload_id": workload_id, "target_id": target_id}


def _tuning_record(row: Row[Any], workload_key: str, target_fingerprint: str) -> TuningRecord:
    """A TuningRecord from a row selected with _RECORD_COLUMNS."""
    return _from_row(
        TuningRecord, row, workload_key=workload_key, target_fingerprint=target_fingerprint
    )
