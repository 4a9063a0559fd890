"""The tuning state of one workload on one target, advanced one round at a time.

A `TaskTuner` holds what tuning a workload needs between rounds: the design space and its
sampler, the search strategy, the cost model it trains, the set of traces already measured
(from the record store, so nothing is measured twice), the best times seen and the failures.
`round(executor, n)` proposes up to `n` unmeasured candidates, measures them, commits every
trial (filed under the target's fingerprint and the space version) and retrains the model.
A round also comes in its three steps, so a loop can pipeline rounds: `start_round` proposes
and starts the builds (a `RoundInFlight`), `RoundInFlight.start_runs` queues the built
kernels on the runners, `finish_round` waits for the results and commits them, and `learn`
retrains the model; the next batch can be proposed and built while this one is timed.
`tuning.tune` drives one tuner to a trial count; the coordinator's job loop drives one tuner
per (task, bucket) of a model, several sharing one cost model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, as_completed, wait
from dataclasses import dataclass
from typing import Any

from tunefleet.database import NewRecord, RecordStore, TargetInfo, WorkloadInfo
from tunefleet.ir import structural_hash
from tunefleet.ir.trace import Trace
from tunefleet.workers import (
    BuildInput,
    BuildResult,
    Executor,
    MeasureConfig,
    MeasureInput,
    MeasureResult,
    Problem,
    RunInput,
    Status,
    Target,
)

from .candidates import Candidate, SpaceSampler
from .cost_model import CostModel, Sample
from .postproc import default_postprocs
from .space import SpaceContext, SpaceGenerator, rules_for, space_version
from .strategy import SearchStrategy

TOP_K = 64  # best measured traces the search strategy is seeded with


class TuneInterrupted(KeyboardInterrupt):
    """Tuning was stopped (Ctrl-C, SIGTERM): what this run committed and what it dropped.

    Trials whose build and run had finished when the stop came are committed with the rest
    of this run's records; the candidates still building or running are dropped unrecorded.
    """

    def __init__(self, committed: int, dropped: int) -> None:
        super().__init__(f"committed {committed} finished trials; dropped {dropped} in flight")
        self.committed = committed
        self.dropped = dropped


class RoundOverdue(TimeoutError):
    """A round's results were still coming when its deadline (a job's time limit) passed;
    the round is left open for `TaskTuner.abort_round`."""


@dataclass(frozen=True)
class Progress:
    """Reported after every measured trial (for progress bars and logs)."""

    trials_done: int
    trials_total: int
    best_ms: float | None
    failures: int
    status: str
    median_ms: float | None


@dataclass(frozen=True)
class Outcome:
    """What one measured candidate of a round came to (the job loop reads crashes off it)."""

    trace_hash: str
    status: str
    message: str
    build_s: float = 0.0  # the worker's build and run wall times (metrics read them)
    run_s: float = 0.0
    median_ms: float | None = None
    device: str = ""


@dataclass(frozen=True)
class RoundResult:
    """One round of a tuner: trials measured and committed, failures among them, the best
    time of the workload after it (every record, this run or not), and whether the space had
    no unmeasured candidate left (then `trials` is smaller than asked, possibly 0);
    `outcomes` has one entry per measured candidate, in proposal order."""

    trials: int
    failures: int
    best_ms: float | None
    exhausted: bool
    outcomes: tuple[Outcome, ...] = ()


@dataclass(frozen=True)
class BatchTimes:
    """When one batch passed its stages, on this process's monotonic clock: proposal began,
    builds were submitted, each build came back (NaN: never), runs were queued, and the last
    result came back (NaN: runs never queued or not finished)."""

    workload_key: str
    trials: int
    proposed_at: float
    builds_started: float
    builds_done: tuple[float, ...]
    runs_started: float
    runs_done: float

    def built_while_timing(self, other: BatchTimes) -> bool:
        """True when a build of this batch came back while `other`'s runs were being timed."""
        return any(other.runs_started < t < other.runs_done for t in self.builds_done)


class RoundInFlight:
    """One batch of a tuner's candidates on its way through build and run.

    Builds start when it is made; `start_runs` waits for them and queues the built kernels.
    Every result (a failed build, a run) arrives through its future's callback, stamped with
    the monotonic time it came, so after a stop `arrived_before(t)` is exactly what finished
    before it, whichever thread was busy meanwhile; `collect` hands them to the caller's
    thread in arrival order.
    """

    def __init__(
        self, tuner: TaskTuner, batch: list[Candidate], wanted: int, executor: Executor,
        proposed_at: float,
    ) -> None:  # fmt: skip
        self.tuner = tuner
        self.batch = batch
        self.wanted = wanted
        self.samples: list[Sample] = []
        self.closed = False  # finished, aborted or dropped
        self._proposed_at = proposed_at
        self._arrivals: queue.SimpleQueue[tuple[int, MeasureResult, float]] = queue.SimpleQueue()
        self._arrived: dict[int, tuple[MeasureResult, float]] = {}
        self._built: dict[int, BuildResult] = {}
        self._build_done = [math.nan] * len(batch)
        self._runs_started = math.nan
        self._builds_started = time.monotonic()
        self._runs: list[Future[MeasureResult]] = []
        builds = [BuildInput(tuner.target, workload=tuner.func, trace=c.trace_json) for c in batch]
        self._builds = executor.build(builds)
        for i, fut in enumerate(self._builds):
            fut.add_done_callback(functools.partial(self._on_built, i))

    def _on_built(self, i: int, fut: Future[BuildResult]) -> None:
        self._build_done[i] = time.monotonic()
        try:
            built = fut.result()
        except Exception as err:  # a lost build worker is that candidate's build_error
            message = f"build failed: {type(err).__name__}: {err}"
            built = BuildResult(Status.BUILD_ERROR, None, message=message)
        self._built[i] = built
        if built.artifact is None:
            failed = MeasureResult(built.status, message=built.message, build_s=built.build_s)
            self._arrivals.put((i, failed, time.monotonic()))

    def _on_ran(self, i: int, fut: Future[MeasureResult]) -> None:
        try:
            res = fut.result()
        except Exception as err:  # a lost runner is that candidate's run_error
            res = MeasureResult(Status.RUN_ERROR, message=f"{type(err).__name__}: {err}")
        res = dataclasses.replace(res, build_s=self._built[i].build_s)
        self._arrivals.put((i, res, time.monotonic()))

    def start_runs(self, executor: Executor) -> None:
        """Wait for every build, then queue the built kernels on runners of the target."""
        wait(self._builds)
        while len(self._built) < len(self._builds):  # callbacks run just after the futures
            time.sleep(0.001)
        runnable = sorted(i for i, b in self._built.items() if b.artifact is not None)
        self._runs_started = time.monotonic()
        if not runnable:
            return
        config, problem = self.tuner.config, self.tuner.problem
        runs = executor.run([RunInput(self._built[i].artifact, problem, config) for i in runnable])
        self._runs = runs
        for i, fut in zip(runnable, runs, strict=True):
            fut.add_done_callback(functools.partial(self._on_ran, i))

    def collect(
        self, on_result: Callable[[int, MeasureResult], None], deadline: float | None = None
    ) -> list[MeasureResult]:
        """Wait for every candidate's result, calling `on_result` on this thread as each comes;
        results in proposal order. Raises RoundOverdue once the monotonic `deadline` passes
        with results still out."""
        for i, (res, _) in self._arrived.items():
            on_result(i, res)
        while len(self._arrived) < len(self.batch):
            if deadline is not None and time.monotonic() >= deadline:
                raise RoundOverdue(f"{len(self.batch) - len(self._arrived)} results still out")
            try:
                i, res, at = self._arrivals.get(timeout=0.5)
            except queue.Empty:
                continue
            self._arrived[i] = (res, at)
            on_result(i, res)
        return [self._arrived[i][0] for i in range(len(self.batch))]

    def arrived_before(self, stop_at: float) -> dict[int, MeasureResult]:
        """The results that came back before `stop_at` (a stop: later ones may be casualties
        of the stop itself, such as a runner killed mid-run)."""
        while True:
            try:
                i, res, at = self._arrivals.get_nowait()
            except queue.Empty:
                break
            self._arrived[i] = (res, at)
        return {i: res for i, (res, at) in self._arrived.items() if at < stop_at}

    def cancel_pending(self) -> None:
        """Cancel the builds and runs not started yet (one already running still finishes)."""
        for fut in (*self._builds, *self._runs):
            fut.cancel()

    def cancel(self) -> None:
        """Drop the batch unmeasured: builds not started are cancelled, nothing is recorded."""
        self.cancel_pending()
        self.tuner.in_flight -= {c.trace_hash for c in self.batch}
        self.closed = True

    def times(self) -> BatchTimes:
        """When the batch passed its stages (see BatchTimes)."""
        arrived = [at for _, at in self._arrived.values()]
        done = max(arrived) if len(arrived) == len(self.batch) and arrived else math.nan
        return BatchTimes(
            self.tuner.key, len(self.batch), self._proposed_at, self._builds_started,
            tuple(self._build_done), self._runs_started, done,
        )  # fmt: skip


class TaskTuner:
    """Search, measure, record and learn for one workload (`func`) on one target.

    Construction registers the target and workload in `store` and reloads the workload's
    history: measured traces are never measured again, the fastest seed the search, and every
    one that replays in the current space trains `cost_model`. `job_id` tags the records.
    """

    def __init__(
        self,
        func: Any,
        problem: Problem,
        target: Target,
        store: RecordStore,
        *,
        workload: WorkloadInfo,
        strategy: SearchStrategy,
        cost_model: CostModel,
        seed: int = 0,
        measure_config: MeasureConfig | None = None,
        job_id: int | None = None,
    ) -> None:
        self.func = func
        self.problem = problem
        self.target = target
        self.store = store
        self.search = strategy
        self.model = cost_model
        self.job_id = job_id
        self.key = workload.key
        self.fingerprint = target.fingerprint
        self.version = space_version(target.kind)
        self.config = measure_config or MeasureConfig(seed=seed)
        ctx = SpaceContext(target)
        sketches = SpaceGenerator(*rules_for(target.kind)).generate(func, ctx, seed=seed)
        self.sampler = SpaceSampler(func, sketches, ctx, default_postprocs(target.kind))
        store.ensure_target(target_info(target))
        store.ensure_workload(workload)
        self.measured: set[str] = store.measured_hashes(self.key, self.fingerprint)
        self.in_flight: set[str] = set()  # proposed in a round not finished yet
        self.trials = 0  # measured by this tuner
        self.failures = 0
        self.failed: Counter[str] = Counter()
        self.first_message: dict[str, str] = {}
        self.curve: list[float | None] = []
        self.stale = 0  # records of another space version that no longer replay
        self.top: list[tuple[float, Trace]] = []
        self._reload_history()
        self.best_ms: float | None = self.top[0][0] if self.top else None

    def _reload_history(self) -> None:
        samples: list[Sample] = []
        for rec in self.store.history(self.key, self.fingerprint):
            if rec.status == Status.NOISY:
                continue  # timed under contention: no time to learn from, measured again
            try:
                trace = Trace.from_json(rec.trace_json)
            except (KeyError, ValueError):
                continue
            cand = self.sampler.from_trace(trace)
            if cand is None and rec.space_version != self.version:
                self.stale += 1  # measured, but not a point of the current space
                continue
            if rec.median_ms is not None:
                self.top.append((rec.median_ms, trace))
            if cand is not None:
                samples.append(Sample(cand.features, self.key, rec.trace_hash, rec.median_ms))
        self.model.update(samples)
        self.top.sort(key=lambda p: p[0])
        self.search.notify(self.top[:TOP_K])

    def exclude(self, trace_hashes: set[str]) -> None:
        """Never propose these traces: measured by another job since, or poisoned fleet-wide."""
        self.measured |= trace_hashes

    def refresh_measured(self) -> None:
        """Take in the traces other jobs committed for this workload since the last look."""
        self.exclude(self.store.measured_hashes(self.key, self.fingerprint))

    def measure_default(self, executor: Executor) -> float | None:
        """The median time of the workload's untuned default schedule (not recorded)."""
        return self.default_ms(self.start_default(executor))

    def start_default(self, executor: Executor) -> Future[MeasureResult]:
        """Start building and timing the default schedule (its time: `default_ms`)."""
        build = BuildInput(self.target, workload=self.func, trace=None)
        (fut,) = executor.measure([MeasureInput(build, self.problem, self.config)])
        return fut

    def default_ms(self, started: Future[MeasureResult]) -> float | None:
        """The default schedule's time once measured (None unless ok on the target; a lost
        runner is no time either)."""
        try:
            res = on_target(started.result(), self.fingerprint)
        except Exception:
            return None
        return res.median_ms if res.ok else None

    def round(
        self,
        executor: Executor,
        n: int,
        on_progress: Callable[[Progress], None] | None = None,
        total: int | None = None,
        fence: Callable[[], None] | None = None,
    ) -> RoundResult:
        """Measure up to `n` new candidates, commit them all and retrain the cost model.

        Progress counts this tuner's trials out of `total` (default: this round's end). A
        stop (KeyboardInterrupt) mid-round commits the finished trials and raises
        `TuneInterrupted` with this tuner's committed count and the dropped in-flight ones.
        `fence` goes to `RecordStore.commit`: if it raises, the round's records are dropped
        unlearned and the error propagates.
        """
        flight = self.start_round(executor, n)
        try:
            flight.start_runs(executor)
            return self.finish_round(flight, on_progress, total, fence)
        except KeyboardInterrupt as stop:
            kept = self.abort_round(flight, stop_time(stop), fence)
            raise TuneInterrupted(self.trials + kept, len(flight.batch) - kept) from stop

    def start_round(self, executor: Executor, n: int) -> RoundInFlight:
        """Propose up to `n` candidates (none measured or in flight) and start building them.

        Proposal uses what is known now: the cost model as trained so far and the measured
        top, not the results of rounds still in flight.
        """
        proposed_at = time.monotonic()
        batch = self.search.generate(self.sampler, self.model, self.measured | self.in_flight, n)
        self.in_flight |= {c.trace_hash for c in batch}
        return RoundInFlight(self, batch, n, executor, proposed_at)

    def finish_round(
        self,
        flight: RoundInFlight,
        on_progress: Callable[[Progress], None] | None = None,
        total: int | None = None,
        fence: Callable[[], None] | None = None,
        learn: bool = True,
        deadline: float | None = None,
    ) -> RoundResult:
        """Wait for a started round's results (runs queued), commit them, update the best.

        With `learn` the cost model is retrained at once; otherwise the caller calls `learn`
        later (a pipelined loop queues the next batch's runs first). A stop, a refused fence
        or a passed `deadline` (RoundOverdue) leaves the round open for `abort_round`/`cancel`.
        """
        batch = flight.batch
        if not batch:
            flight.closed = True
            return RoundResult(0, 0, self.best_ms, exhausted=True)
        finished: dict[int, MeasureResult] = {}
        counts = (self.trials, total if total is not None else self.trials + len(batch))
        report = _collector(
            finished, on_progress, self.fingerprint, counts, self.best_ms, self.failures
        )
        results = [on_target(r, self.fingerprint) for r in flight.collect(report, deadline)]
        try:
            records = [self._record(c, r) for c, r in zip(batch, results, strict=True)]
            self.store.commit(records, fence)
        finally:  # committed, or refused by the fence: either way no longer in flight
            flight.closed = True
            self.in_flight -= {c.trace_hash for c in batch}
        failures = 0
        for cand, res in zip(batch, results, strict=True):
            self.trials += 1
            self.measured.add(cand.trace_hash)  # this run only: a noisy one is retried later
            ms = res.median_ms if res.ok else None
            if res.status is not Status.NOISY:  # no time to learn from
                flight.samples.append(Sample(cand.features, self.key, cand.trace_hash, ms))
            if ms is None:
                failures += 1
                self.failed[res.status.value] += 1
                self.first_message.setdefault(res.status.value, _first_line(res.message))
            else:
                self.top.append((ms, cand.trace))
                self.best_ms = ms if self.best_ms is None else min(self.best_ms, ms)
            self.curve.append(self.best_ms)
        self.failures += failures
        if learn:
            self.learn(flight)
        outcomes = tuple(_outcome(c, r) for c, r in zip(batch, results, strict=True))
        return RoundResult(len(batch), failures, self.best_ms, len(batch) < flight.wanted, outcomes)

    def learn(self, flight: RoundInFlight) -> None:
        """Retrain the cost model on a finished round and seed the search with the new top."""
        self.model.update(flight.samples)
        flight.samples = []
        self.top.sort(key=lambda p: p[0])
        self.search.notify(self.top[:TOP_K])

    def abort_round(
        self, flight: RoundInFlight, stop_at: float, fence: Callable[[], None] | None = None
    ) -> int:
        """After a stop or a passed time limit: commit the round's results that came back
        before `stop_at`, drop the rest unrecorded (cancelling what has not started); returns
        how many were committed (0 for a closed round)."""
        if flight.closed:
            return 0
        flight.closed = True
        flight.cancel_pending()
        self.in_flight -= {c.trace_hash for c in flight.batch}
        kept = {
            i: on_target(r, self.fingerprint) for i, r in flight.arrived_before(stop_at).items()
        }
        self.store.commit([self._record(flight.batch[i], kept[i]) for i in sorted(kept)], fence)
        return len(kept)

    def failure_kinds(self) -> tuple[tuple[str, int, str], ...]:
        """(status, count, first line of the first message) per failure status, most common
        first."""
        return tuple((s, c, self.first_message[s]) for s, c in self.failed.most_common())

    def _record(self, cand: Candidate, res: MeasureResult) -> NewRecord:
        ok = res.ok and res.median_ms is not None
        timed = ok or res.status is Status.NOISY  # a noisy record keeps its timings as evidence
        return NewRecord(
            workload_key=self.key,
            target_fingerprint=self.fingerprint,
            trace_json=cand.trace_json,
            trace_hash=cand.trace_hash,
            status=res.status.value,
            timings_ms=res.timings_ms if timed else (),
            median_ms=res.median_ms if ok else None,
            error_msg=res.message[:2000],
            job_id=self.job_id,
            space_version=self.version,
            spread=res.spread if timed else None,
            attempts=res.attempts or None,
        )


def _outcome(cand: Candidate, res: MeasureResult) -> Outcome:
    return Outcome(
        cand.trace_hash,
        res.status.value,
        res.message,
        build_s=res.build_s,
        run_s=res.run_s,
        median_ms=res.median_ms if res.ok else None,
        device=res.device,
    )


def target_info(target: Target) -> TargetInfo:
    """The record store's row of a target."""
    info = target.to_info()
    return TargetInfo(
        info["kind"], info["fingerprint"], info["device"], info["arch"], info["details"]
    )


def workload_info(func: Any, op: str, shape: Mapping[str, Any], dtype: str) -> WorkloadInfo:
    """The record store's row of a PrimFunc, keyed by its structural hash."""
    return WorkloadInfo(structural_hash(func), op, dict(shape), dtype, func.to_json())


def stop_time(stop: BaseException) -> float:
    """When a stop happened: the signal handler's stamp (`at`) when it left one, else now."""
    at = getattr(stop, "at", None)
    return at if isinstance(at, float) else time.monotonic()


def measure_batch(
    executor: Executor,
    builds: list[BuildInput],
    problem: Problem,
    config: MeasureConfig,
    on_result: Callable[[int, MeasureResult], None] | None = None,
) -> list[MeasureResult]:
    """Build every candidate first, then time them: no compiler competes with a timed kernel.

    Results come back in input order; `on_result(index, result)` is called as each one is
    known (a failed build as soon as it finishes), so progress moves per candidate.
    """
    build_futures = executor.build(builds)
    position = {f: i for i, f in enumerate(build_futures)}
    built: dict[int, BuildResult] = {}
    results: list[MeasureResult] = [MeasureResult(Status.BUILD_ERROR)] * len(builds)
    for fut in as_completed(build_futures):
        i = position[fut]
        b = built[i] = fut.result()
        results[i] = MeasureResult(b.status, message=b.message, build_s=b.build_s)
        if b.artifact is None and on_result is not None:
            on_result(i, results[i])
    runnable = sorted(i for i, b in built.items() if b.artifact is not None)
    if runnable:
        runs = executor.run([RunInput(built[i].artifact, problem, config) for i in runnable])
        run_position = dict(zip(runs, runnable, strict=True))
        for fut in as_completed(runs):
            i = run_position[fut]
            try:
                res = fut.result()
            except Exception as err:  # a lost runner is that candidate's run_error
                res = MeasureResult(Status.RUN_ERROR, message=f"{type(err).__name__}: {err}")
            results[i] = dataclasses.replace(res, build_s=results[i].build_s)
            if on_result is not None:
                on_result(i, results[i])
    return results


def on_target(result: MeasureResult, fingerprint: str) -> MeasureResult:
    """`result` if its worker measured on the target `fingerprint` (or nothing ran), else a
    run_error saying where it was measured: a record answers only for its own target."""
    measured_on = result.target_fingerprint
    if measured_on == fingerprint or (not measured_on and not result.ok):
        return result
    message = f"measured on {measured_on or 'an unknown device'} but the task targets {fingerprint}"
    return dataclasses.replace(
        result, status=Status.RUN_ERROR, median_ms=None, timings_ms=(), message=message
    )


def _collector(
    finished: dict[int, MeasureResult],
    on_progress: Callable[[Progress], None] | None,
    fingerprint: str,
    counts: tuple[int, int],
    best_ms: float | None,
    failures: int,
) -> Callable[[int, MeasureResult], None]:
    """Keep each finished result of the batch in flight (refused when measured on another
    target than `fingerprint`) and report progress counting it; `counts` is (done, total)."""
    done, total = counts

    def report(i: int, res: MeasureResult) -> None:
        res = on_target(res, fingerprint)
        finished[i] = res
        if on_progress is None:
            return
        oks = [r.median_ms for r in finished.values() if r.ok and r.median_ms is not None]
        best = min([*oks, best_ms] if best_ms is not None else oks, default=None)
        failed = len(finished) - len(oks)
        ms = res.median_ms if res.ok else None
        on_progress(
            Progress(done + len(finished), total, best, failures + failed, res.status.value, ms)
        )

    return report


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:200] if lines else ""
