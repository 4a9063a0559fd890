"""A job's side of the fleet state: its leases, heartbeat, fence, events and poison reports.

`JobFleet` wraps the `FleetState` a job was given. It holds the (workload, target) leases the
job tunes under, renews them from a heartbeat thread, builds the fence `RecordStore.commit`
checks, and publishes the job's progress events. When the fleet state becomes unreachable
mid-job it warns once and carries on with an in-process state, so the job finishes from the
database alone: the records never depended on the fleet state.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from tunefleet.coordinator.fleet_local import LocalFleetState
from tunefleet.coordinator.fleet_state import (
    BestEntry,
    EventValue,
    FleetState,
    FleetStateUnavailable,
    Lease,
    LeaseLost,
)
from tunefleet.tuner.task_tuner import Outcome
from tunefleet.workers import Status

T = TypeVar("T")

WORKER_DIED = "worker died:"  # the runner's message for a worker killed by a signal
WORKER_HUNG = "worker killed and replaced"  # the runner's message for a run past its timeout


class FencedOut(LeaseLost):
    """A commit was refused: the job's lease of the pair was lost or superseded."""


def failure_kind(outcome: Outcome) -> str | None:
    """'crash' or 'hang' when the candidate killed or hung its worker, else None."""
    if outcome.status == Status.RUN_ERROR.value and outcome.message.startswith(WORKER_DIED):
        return "crash"
    if outcome.status == Status.TIMEOUT.value and WORKER_HUNG in outcome.message:
        return "hang"
    return None


def holder_name(job_id: int) -> str:
    """Who holds a lease: the job, the host and the process (a resume is a new holder)."""
    return f"job-{job_id}@{socket.gethostname()}:{os.getpid()}"


class JobFleet:
    """The fleet state as one job's loop uses it (see the module doc); thread-safe."""

    def __init__(
        self,
        state: FleetState,
        job_id: int,
        target_fp: str,
        *,
        ttl_s: float = 30.0,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.state = state
        self.job_id = job_id
        self.target_fp = target_fp
        self.ttl_s = ttl_s
        self.holder = holder_name(job_id)
        self.degraded = False
        self._warn = warn or (lambda line: None)
        self._leases: dict[str, Lease] = {}
        self._tokens: dict[str, int] = {}  # highest token this job was issued, as a floor
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        self._beat.start()

    # -- fallback ------------------------------------------------------------------------

    def _call(self, work: Callable[[FleetState], T]) -> T:
        """Run `work` on the fleet state; on a lost server switch to the in-process one."""
        with self._lock:
            try:
                return work(self.state)
            except FleetStateUnavailable as err:
                self._degrade(err)
                return work(self.state)

    def _degrade(self, err: FleetStateUnavailable) -> None:
        self._warn(
            f"tunefleet: warning: {err}; job {self.job_id} continues from the database alone"
        )
        self.degraded = True
        self.state = LocalFleetState(self.state.config)
        held, self._leases = self._leases, {}
        for key in held:  # this process's leases move over, with tokens above the old ones
            lease = self.state.acquire_lease(
                key, self.target_fp, self.holder, self.ttl_s, floor=self._tokens.get(key, 0)
            )
            if lease is not None:
                self._hold(lease)

    # -- leases --------------------------------------------------------------------------

    def _hold(self, lease: Lease) -> None:
        key = lease.key.workload_key
        self._leases[key] = lease
        self._tokens[key] = max(self._tokens.get(key, 0), lease.token)

    def acquire(self, workload_key: str) -> bool:
        """Hold the pair's lease (True), or False while another live job holds it."""
        with self._lock:
            if workload_key in self._leases:
                return True
            floor = self._tokens.get(workload_key, 0)
            lease = self._call(
                lambda s: s.acquire_lease(
                    workload_key, self.target_fp, self.holder, self.ttl_s, floor=floor
                )
            )
            if lease is None:
                return False
            self._hold(lease)
            return True

    @property
    def held(self) -> int:
        """How many leases the job holds now."""
        with self._lock:
            return len(self._leases)

    def release(self, workload_key: str) -> None:
        """Give the pair's lease back (its workload is finished, or the job ends)."""
        with self._lock:
            lease = self._leases.pop(workload_key, None)
            if lease is not None:
                self._call(lambda s: s.release_lease(lease))

    def drop(self, workload_key: str) -> None:
        """Forget a lease that was lost, so the next `acquire` takes a fresh one."""
        with self._lock:
            self._leases.pop(workload_key, None)

    def fence(self, workload_key: str) -> Callable[[], None]:
        """The check a commit of the pair's records runs inside its transaction: FencedOut
        unless this job holds the pair's newest token."""

        def check() -> None:
            with self._lock:
                lease = self._leases.get(workload_key)
                current = self._call(lambda s: s.fencing_token(workload_key, self.target_fp))
                if lease is None or lease.token < current:
                    raise FencedOut(
                        f"the lease of {workload_key[:16]}@{self.target_fp} passed to another "
                        "holder; this round's records were not committed"
                    )

        return check

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            with self._lock:
                for key, lease in list(self._leases.items()):
                    try:
                        renewed: Lease | None = self._call(
                            lambda s, held=lease: s.renew_lease(held)
                        )
                    except LeaseLost:
                        renewed = None  # the next commit of the pair is fenced out
                    if self._leases.get(key) is not lease:
                        continue  # moved to the in-process state meanwhile
                    if renewed is None:
                        del self._leases[key]
                    else:
                        self._leases[key] = renewed

    # -- events, cache, poison -----------------------------------------------------------

    def publish(self, event: Mapping[str, EventValue]) -> None:
        """Append a progress event to the job's stream."""
        self._call(lambda s: s.publish(str(self.job_id), event))

    def poisoned(self, workload_key: str) -> set[str]:
        """Traces of the pair that crashed or hung workers often enough to skip everywhere."""
        return self._call(lambda s: s.poisoned(workload_key, self.target_fp))

    def report(self, workload_key: str, outcomes: Iterable[Outcome]) -> int:
        """Report the candidates that crashed or hung their worker; returns how many."""
        n = 0
        for outcome in outcomes:
            kind = failure_kind(outcome)
            if kind is not None:
                self._call(
                    lambda s, o=outcome, k=kind: s.report_failure(
                        workload_key, self.target_fp, o.trace_hash, k
                    )
                )
                n += 1
        return n

    def new_best(self, workload_key: str, entry: BestEntry) -> None:
        """A new best landed in the database: replace the cached one."""
        self._call(lambda s: s.invalidate_best(workload_key, self.target_fp))
        self._call(lambda s: s.set_best(workload_key, self.target_fp, entry))

    def close(self) -> None:
        """Stop the heartbeat and release every lease still held (the state stays open)."""
        self._stop.set()
        self._beat.join(timeout=5)
        with self._lock:
            for key in list(self._leases):
                self.release(key)
