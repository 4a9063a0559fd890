"""The in-process fleet state: the embedded default when no Redis is given.

Same semantics as `fleet_redis.RedisFleetState` for the threads of one process: one lock guards
plain dicts, TTLs run on the monotonic clock, and a condition wakes blocked event readers.
Everything goes with the process, as Redis state may go with its server.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from tunefleet.coordinator.fleet_state import (
    BestEntry,
    EventValue,
    FleetConfig,
    FleetEvent,
    FleetState,
    Lease,
    LeaseLost,
    TaskKey,
    check_failure_status,
    check_ttl,
    event_fields,
)

StreamId = tuple[int, int]


def parse_stream_id(text: str) -> StreamId:
    """`"<ms>-<seq>"` (or `"<ms>"`, sequence 0) as a comparable pair, as Redis reads it."""
    ms, _, seq = text.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise ValueError(f"not a stream id: {text!r}") from None


@dataclass
class _Holding:
    holder: str
    token: int
    deadline: float


@dataclass
class _Stream:
    events: deque[tuple[StreamId, dict[str, str]]]
    last: StreamId = (0, 0)
    deadline: float = 0.0


@dataclass
class _Failures:
    counts: dict[str, int] = field(default_factory=dict)
    deadline: float = 0.0


class LocalFleetState(FleetState):
    """Fleet state in this process's memory, thread-safe, with TTLs on the monotonic clock."""

    def __init__(self, config: FleetConfig | None = None) -> None:
        super().__init__(config)
        self._lock = threading.Lock()
        self._published = threading.Condition(self._lock)
        self._leases: dict[TaskKey, _Holding] = {}
        self._tokens: dict[TaskKey, int] = {}
        self._streams: dict[str, _Stream] = {}
        self._best: dict[TaskKey, tuple[BestEntry, float]] = {}
        self._failures: dict[TaskKey, _Failures] = {}

    # -- leases ------------------------------------------------------------------------------

    def _live(self, key: TaskKey, now: float) -> _Holding | None:
        holding = self._leases.get(key)
        if holding is not None and holding.deadline <= now:
            del self._leases[key]
            return None
        return holding

    def acquire_lease(
        self, workload_key: str, target_fp: str, holder: str, ttl_s: float, *, floor: int = 0
    ) -> Lease | None:
        check_ttl(ttl_s)
        key = TaskKey(workload_key, target_fp)
        with self._lock:
            now = time.monotonic()
            holding = self._live(key, now)
            if holding is not None and holding.holder != holder:
                return None
            token = max(self._tokens.get(key, 0), floor) + 1
            self._tokens[key] = token
            self._leases[key] = _Holding(holder, token, now + ttl_s)
            return Lease(key, holder, token, now + ttl_s, ttl_s)

    def renew_lease(self, lease: Lease) -> Lease:
        with self._lock:
            now = time.monotonic()
            holding = self._live(lease.key, now)
            if holding is None or (holding.holder, holding.token) != (lease.holder, lease.token):
                raise LeaseLost(f"lease of {lease.key} (token {lease.token}) expired or was taken")
            holding.deadline = now + lease.ttl_s
            return Lease(lease.key, lease.holder, lease.token, holding.deadline, lease.ttl_s)

    def release_lease(self, lease: Lease) -> None:
        with self._lock:
            holding = self._live(lease.key, time.monotonic())
            if holding is not None and (holding.holder, holding.token) == (
                lease.holder,
                lease.token,
            ):
                del self._leases[lease.key]

    def fencing_token(self, workload_key: str, target_fp: str) -> int:
        with self._lock:
            return self._tokens.get(TaskKey(workload_key, target_fp), 0)

    # -- progress events ---------------------------------------------------------------------

    def _stream(self, job_id: str, now: float) -> _Stream | None:
        stream = self._streams.get(job_id)
        if stream is not None and stream.deadline <= now:
            del self._streams[job_id]
            return None
        return stream

    def publish(self, job_id: str, event: Mapping[str, EventValue]) -> str:
        fields = event_fields(event)
        with self._lock:
            now = time.monotonic()
            stream = self._stream(job_id, now)
            if stream is None:
                stream = self._streams[job_id] = _Stream(deque(maxlen=self.config.events_maxlen))
            ms = int(time.time() * 1000)
            new_id = (ms, 0) if ms > stream.last[0] else (stream.last[0], stream.last[1] + 1)
            stream.events.append((new_id, fields))
            stream.last = new_id
            stream.deadline = now + self.config.events_ttl_s
            self._published.notify_all()
            return f"{new_id[0]}-{new_id[1]}"

    def read_events(
        self, job_id: str, after: str = "0", block_ms: int | None = None, count: int = 100
    ) -> list[FleetEvent]:
        with self._lock:
            now = time.monotonic()
            if after == "$":
                stream = self._stream(job_id, now)
                start = stream.last if stream is not None else (0, 0)
            else:
                start = parse_stream_id(after)
            deadline = now + (block_ms or 0) / 1000
            while True:
                stream = self._stream(job_id, time.monotonic())
                found = [
                    FleetEvent(f"{i[0]}-{i[1]}", dict(fields))
                    for i, fields in (stream.events if stream is not None else ())
                    if i > start
                ][:count]
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._published.wait(remaining)

    # -- best-schedule cache -----------------------------------------------------------------

    def get_best(self, workload_key: str, target_fp: str) -> BestEntry | None:
        key = TaskKey(workload_key, target_fp)
        with self._lock:
            cached = self._best.get(key)
            if cached is None:
                return None
            if cached[1] <= time.monotonic():
                del self._best[key]
                return None
            return cached[0]

    def set_best(
        self, workload_key: str, target_fp: str, entry: BestEntry, ttl_s: float | None = None
    ) -> None:
        ttl_s = self.config.best_ttl_s if ttl_s is None else ttl_s
        check_ttl(ttl_s)
        with self._lock:
            self._best[TaskKey(workload_key, target_fp)] = (entry, time.monotonic() + ttl_s)

    def invalidate_best(self, workload_key: str, target_fp: str) -> None:
        with self._lock:
            self._best.pop(TaskKey(workload_key, target_fp), None)

    # -- poison list -------------------------------------------------------------------------

    def _failures_of(self, key: TaskKey, now: float) -> _Failures | None:
        failures = self._failures.get(key)
        if failures is not None and failures.deadline <= now:
            del self._failures[key]
            return None
        return failures

    def report_failure(
        self, workload_key: str, target_fp: str, trace_hash: str, status: str
    ) -> int:
        check_failure_status(status)
        key = TaskKey(workload_key, target_fp)
        with self._lock:
            now = time.monotonic()
            failures = self._failures_of(key, now) or self._failures.setdefault(key, _Failures())
            failures.counts[trace_hash] = failures.counts.get(trace_hash, 0) + 1
            failures.deadline = now + self.config.poison_ttl_s
            return failures.counts[trace_hash]

    def poisoned(self, workload_key: str, target_fp: str) -> set[str]:
        with self._lock:
            failures = self._failures_of(TaskKey(workload_key, target_fp), time.monotonic())
            if failures is None:
                return set()
            return {h for h, n in failures.counts.items() if n >= self.config.poison_after}

    def close(self) -> None:
        """Nothing to release: the state lives as long as this object."""
