"""The job loop: tune every task of a model at every bucket, one round at a time.

A job is a row of the `jobs` table (its config: model, phases, bucket sets, budget, wall
time, target fingerprint, strategy, scheduler, seed) and one `tasks` row per (task, bucket)
workload (see job_plan.py). The loop asks the task scheduler which workload gets the next
round, runs that round through the workload's `TaskTuner` (records committed as the round
ends), then writes the task row (trials, best, status) and the job's elapsed time: a
coordinator killed at any point loses at most the round in flight. It stops when the trial
budget is spent, the wall time is up or every workload is finished (its space exhausted, or
converged: `patience` rounds in a row improved its best by less than 1%). Rounds are pipelined
unless `JobConfig.pipeline` is off: the next batch is proposed and built while the current one
is timed, and queued on the runners once the current one is committed, so a kill still loses
at most one batch of measurements (the batch being built has none yet).

`resume_job` rebuilds the plan from the stored config, takes each task's trials from the
records committed under the job's id (so a task row that lagged behind a crash is corrected),
replays them into a fresh scheduler and continues; measured traces are never measured again.
Final statuses: done, cancelled (SIGINT/SIGTERM; resumable) or failed (an error).

Jobs share a fleet state (`JobOptions.fleet`, through job_fleet.JobFleet): a round runs under
the (workload, target) lease and commits behind its fence, a workload leased by another job
waits, traces other jobs measured or poisoned are never proposed, and progress goes to the
job's event stream. Losing the fleet state mid-job costs one warning, never a record.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunefleet.coordinator.buckets import DimSpecError
from tunefleet.coordinator.fleet_local import LocalFleetState
from tunefleet.coordinator.fleet_state import BestEntry, FleetState
from tunefleet.coordinator.graph import PINNED, Phase
from tunefleet.coordinator.job_fleet import FencedOut, JobFleet
from tunefleet.coordinator.job_plan import (
    PlannedWorkload,
    ProblemBuilder,
    chain_problem,
    plan_workloads,
)
from tunefleet.coordinator.models import ModelConfig
from tunefleet.coordinator.presets import resolve_model
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.database import JobInfo, NewTask, RecordStore, TaskInfo, default_url
from tunefleet.tuner.cost_model import CostModel, create_cost_model, model_path
from tunefleet.tuner.strategy import create_strategy
from tunefleet.tuner.task_scheduler import create_task_scheduler
from tunefleet.tuner.task_tuner import (
    BatchTimes,
    Progress,
    RoundInFlight,
    RoundOverdue,
    TaskTuner,
    stop_time,
    target_info,
    workload_info,
)
from tunefleet.tuner.tuning import default_cache_dir, default_model_dir
from tunefleet.workers import (
    BuildConfig,
    Executor,
    MeasureConfig,
    MeasureResult,
    Target,
    create_executor,
    resolve_target,
)

if TYPE_CHECKING:
    from tunefleet.dashboards.metrics import JobMetrics

CONVERGED_GAIN = 0.01  # a round that improves the best by less than this fraction is flat


class JobError(ValueError):
    """A job cannot start or resume: bad config, unknown job, nothing to tune."""


class JobInterrupted(KeyboardInterrupt):
    """The loop was stopped (SIGINT, SIGTERM): the job is cancelled and can be resumed."""

    def __init__(self, job_id: int, trials: int) -> None:
        super().__init__(
            f"job {job_id} cancelled with {trials} trials recorded; "
            f"continue it with 'tunefleet job resume {job_id}'"
        )
        self.job_id = job_id
        self.trials = trials


@dataclass(frozen=True)
class JobConfig:
    """What a job tunes and within what; stored as the job row's config."""

    model: str  # a preset name or a config.json path
    phases: tuple[str, ...] = ("decode", "prefill")
    sets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # bucket values per dim
    budget: int = 64  # trials over all workloads
    time_s: float | None = None  # wall time over all runs of the job
    target: str = "cpu"
    strategy: str = "evolutionary"
    scheduler: str = "gradient"
    seed: int = 0
    trials_per_round: int = 16
    patience: int = 3  # flat rounds in a row before a workload counts as converged
    pipeline: bool = True  # build the next batch while this one is timed
    tasks: tuple[str, ...] = ()  # tune only the tasks of these names (empty: every task)

    def __post_init__(self) -> None:
        if self.budget < 1:
            raise JobError(f"the budget must be at least 1 trial (got {self.budget})")
        if self.time_s is not None and self.time_s <= 0:
            raise JobError(f"the time limit must be positive (got {self.time_s} s)")
        if self.trials_per_round < 1:
            raise JobError(f"trials per round must be at least 1 (got {self.trials_per_round})")
        bad = [p for p in self.phases if p not in {ph.value for ph in Phase}]
        if bad or not self.phases:
            raise JobError(f"unknown phase {', '.join(bad) or '(none)'}; use decode, prefill")

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data for the job row."""
        out = asdict(self)
        out["phases"] = list(self.phases)
        out["sets"] = {k: list(v) for k, v in self.sets.items()}
        out["tasks"] = list(self.tasks)
        return out

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> JobConfig:
        """The config a job row stores (unknown keys, such as the loop's notes, are ignored)."""
        names = JobConfig.__dataclass_fields__
        kept = {k: v for k, v in data.items() if k in names}
        kept["phases"] = tuple(kept.get("phases", ()))
        kept["sets"] = {k: tuple(v) for k, v in kept.get("sets", {}).items()}
        kept["tasks"] = tuple(kept.get("tasks", ()))
        return JobConfig(**kept)


@dataclass(frozen=True)
class TaskState:
    """One (task, bucket) workload of a job and how far it got."""

    name: str
    workload_key: str
    bucket: Mapping[str, int]
    weight: float
    trials: int
    best_ms: float | None
    default_ms: float | None
    status: str
    note: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "workload_key": self.workload_key,
            "bucket": dict(self.bucket),
            "weight": self.weight,
            "trials": self.trials,
            "best_ms": self.best_ms,
            "default_ms": self.default_ms,
            "status": self.status,
            "note": self.note,
        }


@dataclass(frozen=True)
class JobResult:
    """A job after a run of the loop (also what each progress report carries)."""

    job_id: int
    status: str
    trials: int
    budget: int
    elapsed_s: float
    tasks: tuple[TaskState, ...]
    last: str = ""  # the workload the last round tuned

    @property
    def estimated_ms(self) -> float | None:
        """sum(weight * best) over the workloads with a measurement: the model's time."""
        timed = [t.weight * t.best_ms for t in self.tasks if t.best_ms is not None]
        return sum(timed) if timed else None

    @property
    def finished_tasks(self) -> int:
        return sum(t.status in ("done", "failed", "cancelled") for t in self.tasks)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON `tune --model --json` and `job status --json` print."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "trials": self.trials,
            "budget": self.budget,
            "estimated_ms": self.estimated_ms,
            "elapsed_s": round(self.elapsed_s, 3),
            "tasks": [t.to_json_dict() for t in self.tasks],
        }


@dataclass(frozen=True)
class JobOptions:
    """How this process runs a job (not stored: a resume may use other workers or folders)."""

    workers: str | Executor = "local"
    cache_dir: str | None = None
    model_dir: str | None = None
    measure_config: MeasureConfig | None = None
    measure_default: bool = True
    problem_for: ProblemBuilder | None = None  # None: every task's composed op chain
    on_progress: Callable[[JobResult], None] | None = None  # after every round
    on_trial: Callable[[Progress], None] | None = None  # after every trial of a round
    on_batch: Callable[[BatchTimes], None] | None = None  # a round's stage times, as it ends
    fleet: FleetState | None = None  # shared leases, events, cache, poison; None: in-process
    lease_ttl_s: float = 30.0  # a dead job's workloads go to others after this
    lease_poll_s: float = 0.5  # wait between looks when every workload left is leased elsewhere
    on_warning: Callable[[str], None] | None = None  # one-line warnings; None: to stderr
    metrics: JobMetrics | None = None  # Prometheus metrics of the loop (dashboards.metrics)


def load_model(spec: str) -> ModelConfig:
    """The model a job names (ModelConfigError with one line when unknown or malformed)."""
    return resolve_model(spec)


def plan_job(config: JobConfig, problem_for: ProblemBuilder | None = None) -> list[PlannedWorkload]:
    """The workloads of a job config, in phase, task and bucket order."""
    model = load_model(config.model)
    builder = problem_for or chain_problem
    tasks = []
    for name in config.phases:
        phase = Phase(name)
        sets = {k: v for k, v in config.sets.items() if k not in PINNED[phase]}
        try:
            tasks += [(phase, t) for t in model_tasks(model, phase, buckets=sets)]
        except DimSpecError as err:
            raise JobError(str(err)) from None
    if config.tasks:
        known = {name for _, t in tasks for name in t.names}
        unknown = [name for name in config.tasks if name not in known]
        if unknown:
            raise JobError(
                f"unknown task {', '.join(unknown)} for {model.name}; its tasks: "
                f"{', '.join(sorted(known))} (`tunefleet tasks --model` lists them)"
            )
        tasks = [(ph, t) for ph, t in tasks if set(t.names) & set(config.tasks)]
    return plan_workloads(tasks, builder)


def create_job(
    config: JobConfig,
    db_url: str | None = None,
    problem_for: ProblemBuilder | None = None,
    extra: Mapping[str, Any] | None = None,
) -> int:
    """Plan `config` and write its job row (pending) and task rows without running it, so a
    job can be run elsewhere by id (`resume_job`); `extra` is merged into the stored config."""
    plan = plan_job(config, problem_for)
    target = resolve_target(config.target)
    with RecordStore.open(db_url or default_url()) as store:
        return _create(store, config, plan, target, extra or {})


def start_job(
    config: JobConfig, db_url: str | None = None, options: JobOptions | None = None
) -> JobResult:
    """Create a job for `config` and run it to its end (see the module doc)."""
    opts = options or JobOptions()
    plan = plan_job(config, opts.problem_for)
    target = resolve_target(config.target)
    with RecordStore.open(db_url or default_url()) as store:
        job_id = _create(store, config, plan, target, {})
        return _run(store, job_id, config, plan, target, opts)


def resume_job(
    job_id: int, db_url: str | None = None, options: JobOptions | None = None
) -> JobResult:
    """Continue a stopped, killed or failed job from what its rows and records say."""
    opts = options or JobOptions()
    with RecordStore.open(db_url or default_url()) as store:
        job = store.get_job(job_id)
        if job is None:
            raise JobError(f"job {job_id} does not exist")
        if job.status == "done":
            raise JobError(f"job {job_id} is done; nothing to resume")
        config = JobConfig.from_json(job.config)
        target = resolve_target(config.target)
        if target.fingerprint != job.target_fingerprint:
            raise JobError(
                f"job {job_id} tunes target {job.target_fingerprint}; "
                f"this machine is {target.fingerprint}"
            )
        plan = plan_job(config, opts.problem_for)
        keys = {t.workload_key for t in store.list_tasks(job_id)}
        if keys != {w.workload_key for w in plan}:
            raise JobError(f"job {job_id}: the model's tasks no longer match the job's tasks")
        return _run(store, job_id, config, plan, target, opts)


def job_status(store: RecordStore, job_id: int) -> tuple[JobInfo, JobResult]:
    """A job's row and its progress as stored (names and buckets from the stored plan)."""
    job = store.get_job(job_id)
    if job is None:
        raise JobError(f"job {job_id} does not exist")
    rows = store.list_tasks(job_id)
    labels = job.config.get("labels", {})
    notes = job.config.get("notes", {})
    defaults = job.config.get("defaults", {})
    tasks = tuple(_state(r, labels, notes, defaults) for r in rows)
    elapsed = float(job.config.get("elapsed_s", 0.0))
    trials = sum(t.trials for t in tasks)
    return job, JobResult(job_id, job.status, trials, job.budget, elapsed, tasks)


def _create(
    store: RecordStore,
    config: JobConfig,
    plan: Sequence[PlannedWorkload],
    target: Target,
    extra: Mapping[str, Any],
) -> int:
    store.ensure_target(target_info(target))
    for w in plan:
        store.ensure_workload(workload_info(w.func, w.task.op, w.shape, w.task.dtype))
    stored = {**config.to_json(), "target_fingerprint": target.fingerprint, **extra}
    stored["notes"] = {w.workload_key: w.note for w in plan if w.note}
    name = f"{load_model(config.model).name} {','.join(config.phases)}"
    job_id = store.create_job(name, config.model, target.fingerprint, config.budget, stored)
    rows = store.add_tasks(job_id, [NewTask(w.workload_key, w.weight, 0) for w in plan])
    for w, row in zip(plan, rows, strict=True):
        if w.problem is None:
            store.update_task_progress(row, trials_done=0, status="cancelled")
    return job_id


# -- the loop ----------------------------------------------------------------------------------


def _run(
    store: RecordStore,
    job_id: int,
    config: JobConfig,
    plan: Sequence[PlannedWorkload],
    target: Target,
    opts: JobOptions,
) -> JobResult:
    job = store.get_job(job_id)
    assert job is not None
    stored = dict(job.config)
    stored["labels"] = {w.workload_key: [w.name, dict(w.bucket)] for w in plan}
    defaults: dict[str, float | None] = dict(stored.get("defaults", {}))
    elapsed0 = float(stored.get("elapsed_s", 0.0))
    rows = _reconcile(store, job_id, target.fingerprint)
    tunable = [
        (w, rows[w.workload_key]) for w in plan if rows[w.workload_key].status != "cancelled"
    ]
    tunable = [(w, r) for w, r in tunable if w.problem is not None]
    if not tunable:
        store.set_job_config(job_id, stored)
        store.set_job_status(job_id, "failed")
        raise JobError(f"job {job_id}: no task of the model has a correctness reference yet")
    scheduler = create_task_scheduler(
        config.scheduler, [w for w, _ in tunable], config.budget,
        trials_per_round=config.trials_per_round,
    )  # fmt: skip
    for i, (_, row) in enumerate(tunable):
        if row.trials_done:
            scheduler.on_results(i, row.trials_done, row.best_ms)
        if row.status in ("done", "failed"):
            scheduler.finish(i)
    store.set_job_config(job_id, stored)
    store.set_job_status(job_id, "running")

    start = time.monotonic()
    model = create_cost_model("xgb", seed=config.seed)
    mdir = Path(opts.model_dir or default_model_dir())
    model.load(model_path(mdir, target.fingerprint))
    owned = isinstance(opts.workers, str)
    executor = (
        create_executor(opts.workers, BuildConfig(cache_dir=opts.cache_dir or default_cache_dir()))
        if isinstance(opts.workers, str)
        else opts.workers
    )
    tuners: dict[int, TaskTuner] = {}
    last = ""
    warn = opts.on_warning or _to_stderr
    fleet = JobFleet(opts.fleet or LocalFleetState(), job_id, target.fingerprint,
                     ttl_s=opts.lease_ttl_s, warn=warn)  # fmt: skip
    fleet.publish({"type": "start", "job_id": job_id, "budget": config.budget})
    metrics = opts.metrics
    on_trial = opts.on_trial
    if metrics is not None:
        metrics.job_started(job_id, config.budget, target, plan)
        on_trial = _counting(metrics, job_id, opts.on_trial)
    elsewhere: set[int] = set()  # workloads another job holds the lease of, set aside
    default_runs: dict[str, Future[MeasureResult]] = {}  # default schedules being timed

    def report() -> JobResult:
        return _result(store, job_id, config, stored, elapsed0 + time.monotonic() - start, last)

    # the time of earlier runs of the job counts
    deadline = None if config.time_s is None else start + config.time_s - elapsed0

    def time_up() -> bool:
        return deadline is not None and time.monotonic() >= deadline

    def prepare(timing: _Round | None) -> _Round | None:
        """Choose the next workload, take its lease, propose its batch and start the builds
        (while `timing`, if any, is being timed); None when nothing can start now."""
        busy = () if timing is None else (timing.index,)
        while True:
            if time_up():
                return None
            left = config.budget - scheduler.spent - (0 if timing is None else timing.wanted)
            i = scheduler.next_task(busy) if left >= 1 else None
            if i is None:
                return None
            w, row = tunable[i]
            if not fleet.acquire(w.workload_key):
                scheduler.finish(i)
                elsewhere.add(i)
                continue
            tuner = tuners.get(i) or _tuner(store, w, target, config, model, opts, job_id)
            tuners[i] = tuner
            tuner.refresh_measured()  # other jobs' records of the workload are not measured
            tuner.exclude(fleet.poisoned(w.workload_key))
            key = w.workload_key
            if key not in defaults and key not in default_runs and opts.measure_default:
                default_runs[key] = tuner.start_default(executor)
            if metrics is not None:
                metrics.leases_held(job_id, fleet.held)
            n = min(config.trials_per_round, left)
            return _Round(i, w, row, tuner, tuner.start_round(executor, n))

    def finish(done: _Round) -> bool:
        """Wait for a round's results, commit them and write its rows and events; False when
        its commit was fenced out (the lease passed to another job)."""
        nonlocal last
        i, w, tuner = done.index, done.workload, done.tuner
        before = tuner.best_ms
        fence = fleet.fence(w.workload_key)
        try:
            res = tuner.finish_round(
                done.flight, on_trial, fence=fence, learn=False, deadline=deadline
            )
        except FencedOut as err:
            warn(f"tunefleet: warning: {err}")
            fleet.drop(w.workload_key)
            return False
        if opts.on_batch is not None:
            opts.on_batch(done.flight.times())
        if w.workload_key in default_runs:
            defaults[w.workload_key] = tuner.default_ms(default_runs.pop(w.workload_key))
            stored["defaults"] = defaults
        fleet.report(w.workload_key, res.outcomes)
        if res.best_ms is not None and (before is None or res.best_ms < before):
            _cache_best(store, fleet, w.workload_key, target.fingerprint)
        scheduler.on_results(i, res.trials, res.best_ms)
        progress = scheduler.progress(i)
        finished = res.exhausted or _converged(progress.best_history, config.patience)
        if finished:
            scheduler.finish(i)
        status = "done" if finished else "running"
        if finished and res.best_ms is None:
            status = "failed"  # nothing it measured was valid
        store.update_task_progress(
            done.row.id, trials_done=progress.trials, best_ms=res.best_ms, status=status
        )
        if finished:
            fleet.release(w.workload_key)
        fleet.publish(
            _round_event(job_id, w, progress.trials, res.best_ms, status, scheduler.spent)
        )
        stored["elapsed_s"] = elapsed0 + time.monotonic() - start
        store.set_job_config(job_id, stored)
        last = w.name
        if opts.on_progress is not None:
            opts.on_progress(report())
        if metrics is not None:
            metrics.round_finished(job_id, res.outcomes, fleet.held, report())
        return True

    # Pipelined, the next batch is proposed and built while the current one is timed, and its
    # runs are queued once the current one is committed; unpipelined, one batch at a time.
    timing: _Round | None = None  # the batch on the runners
    flights: list[_Round] = []  # every round not finished, for a stop
    try:
        while True:
            nxt = prepare(timing) if timing is None or config.pipeline else None
            if nxt is not None:
                flights.append(nxt)
            done, timing = timing, None
            ended_one = done is not None
            if done is not None:
                kept = finish(done)
                flights.remove(done)
                same = nxt is not None and nxt.index == done.index
                if nxt is not None and same and (not kept or scheduler.is_finished(nxt.index)):
                    nxt.flight.cancel()  # built for a workload that just finished or was lost
                    flights.remove(nxt)
                    nxt = None
                if not kept:
                    done = None
            if nxt is not None:
                nxt.flight.start_runs(executor)
                if metrics is not None:  # the previous round's results are all in by now
                    metrics.round_started(job_id, len(nxt.flight.batch))
                timing = nxt
            if done is not None:
                done.tuner.learn(done.flight)  # while the next batch is timed
            if timing is not None or ended_one:
                continue
            if not elsewhere or scheduler.spent >= config.budget or time_up():
                break
            time.sleep(opts.lease_poll_s)  # their holders may finish or die meanwhile
            for j in elsewhere:
                scheduler.reopen(j)
            elsewhere.clear()
    except RoundOverdue:  # the time limit passed while a round was timed: keep what came
        _abort(flights, time.monotonic(), fleet, warn)
        _reconcile(store, job_id, target.fingerprint)
    except KeyboardInterrupt as stop:  # finished trials of the round being timed are committed
        _abort(flights, stop_time(stop), fleet, warn)
        rows = _reconcile(store, job_id, target.fingerprint)
        stored["elapsed_s"] = elapsed0 + time.monotonic() - start
        store.set_job_config(job_id, stored)
        store.set_job_status(job_id, "cancelled")
        fleet.publish({"type": "end", "job_id": job_id, "status": "cancelled"})
        raise JobInterrupted(job_id, sum(r.trials_done for r in rows.values())) from stop
    except BaseException:
        store.set_job_status(job_id, "failed")
        fleet.publish({"type": "end", "job_id": job_id, "status": "failed"})
        raise
    finally:
        fleet.close()
        if metrics is not None:
            metrics.job_ended(job_id)
        if owned:
            executor.close()
        model.save(model_path(mdir, target.fingerprint))
    for row in store.list_tasks(job_id):
        if row.status in ("pending", "running"):
            store.update_task_progress(row.id, trials_done=row.trials_done, status="done")
    stored["elapsed_s"] = elapsed0 + time.monotonic() - start
    store.set_job_config(job_id, stored)
    store.set_job_status(job_id, "done")
    final = replace(report(), status="done")
    end = {"type": "end", "job_id": job_id, "status": "done", "trials": final.trials}
    fleet.publish(end)
    if metrics is not None:
        metrics.progress(final)
    return final


def _counting(
    metrics: JobMetrics, job_id: int, then: Callable[[Progress], None] | None
) -> Callable[[Progress], None]:
    """An on_trial callback that counts the trial down in the metrics, then calls `then`."""

    def on_trial(progress: Progress) -> None:
        metrics.trial_done(job_id)
        if then is not None:
            then(progress)

    return on_trial


@dataclass
class _Round:
    """A round of the loop on its way: the workload (index in the scheduler, plan, row), its
    tuner, and the batch in flight."""

    index: int
    workload: PlannedWorkload
    row: TaskInfo
    tuner: TaskTuner
    flight: RoundInFlight

    @property
    def wanted(self) -> int:
        return self.flight.wanted


def _abort(
    flights: Sequence[_Round], at: float, fleet: JobFleet, warn: Callable[[str], None]
) -> None:
    """After a stop (or the time limit) at monotonic time `at`: commit what each open round
    got back before it; drop the rest."""
    for r in flights:
        try:
            r.tuner.abort_round(r.flight, at, fleet.fence(r.workload.workload_key))
        except FencedOut as err:
            warn(f"tunefleet: warning: {err}")


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _round_event(
    job_id: int, w: PlannedWorkload, trials: int, best_ms: float | None, status: str, spent: int
) -> dict[str, str | int | float]:
    """The progress event of one round: the workload's trials, best and status after it."""
    event: dict[str, str | int | float] = {
        "type": "round", "job_id": job_id, "workload": w.name, "workload_key": w.workload_key,
        "bucket": ",".join(f"{k}={v}" for k, v in w.bucket.items()), "trials": trials,
        "status": status, "job_trials": spent,
    }  # fmt: skip
    if best_ms is not None:
        event["best_ms"] = best_ms
    return event


def _cache_best(store: RecordStore, fleet: JobFleet, workload_key: str, fingerprint: str) -> None:
    """A round improved the workload's best: put the database's best in the fleet's cache."""
    best = store.best(workload_key, fingerprint, 1)
    if best:
        fleet.new_best(workload_key, BestEntry(best[0].id, best[0].median_ms, best[0].trace_hash))


def _tuner(
    store: RecordStore,
    w: PlannedWorkload,
    target: Target,
    config: JobConfig,
    model: CostModel,
    opts: JobOptions,
    job_id: int,
) -> TaskTuner:
    assert w.problem is not None
    return TaskTuner(
        w.func, w.problem, target, store,
        workload=workload_info(w.func, w.task.op, w.shape, w.task.dtype),
        strategy=create_strategy(config.strategy, seed=config.seed), cost_model=model,
        seed=config.seed, measure_config=opts.measure_config, job_id=job_id,
    )  # fmt: skip


def _converged(history: Sequence[float], patience: int) -> bool:
    """True when the last `patience` rounds together improved the best by under 1%."""
    if patience < 1 or len(history) <= patience:
        return False
    before, now = history[-1 - patience], history[-1]
    if math.isinf(before) or math.isinf(now):
        return False
    return before - now < CONVERGED_GAIN * before


def _reconcile(store: RecordStore, job_id: int, fingerprint: str) -> dict[str, TaskInfo]:
    """Task rows by workload key, each row's trials and best set from the records committed
    under the job (a killed coordinator may have committed a round but not its row)."""
    counts = store.job_trial_counts(job_id)
    out = {}
    for row in store.list_tasks(job_id):
        done = counts.get(row.workload_key, 0)
        if done != row.trials_done:
            best = store.best(row.workload_key, fingerprint, 1)
            row = store.update_task_progress(
                row.id, trials_done=done, best_ms=best[0].median_ms if best else None
            )
        out[row.workload_key] = row
    return out


def _result(
    store: RecordStore,
    job_id: int,
    config: JobConfig,
    stored: Mapping[str, Any],
    elapsed: float,
    last: str,
) -> JobResult:
    rows = store.list_tasks(job_id)
    labels, notes = stored.get("labels", {}), stored.get("notes", {})
    defaults = stored.get("defaults", {})
    tasks = tuple(_state(r, labels, notes, defaults) for r in rows)
    trials = sum(t.trials for t in tasks)
    return JobResult(job_id, "running", trials, config.budget, elapsed, tasks, last)


def _state(
    row: TaskInfo,
    labels: Mapping[str, Any],
    notes: Mapping[str, str],
    defaults: Mapping[str, float | None],
) -> TaskState:
    name, bucket = labels.get(row.workload_key, [row.workload_key[:16], {}])
    return TaskState(
        name=name,
        workload_key=row.workload_key,
        bucket=dict(bucket),
        weight=row.weight,
        trials=row.trials_done,
        best_ms=row.best_ms,
        default_ms=defaults.get(row.workload_key),
        status=row.status,
        note=notes.get(row.workload_key, ""),
    )
