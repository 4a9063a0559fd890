"""The tuning loop for one operator on one target: search, measure, record, learn.

`tune(...)` builds the workload, opens the record store, generates the design space for the
target, loads what the database already knows (measured traces are never measured again, but
those recorded `noisy`, timed under contention, are; the fastest seed the search; all but the
noisy train the cost model), measures the untuned default
schedule for reference, then alternates: the strategy proposes a batch, the executor measures
it, every trial is committed, the cost model is retrained. A second call on the same database
continues from what is there. The result is a frozen `TuneResult`.

Records are filed under the fingerprint of the target being tuned, and only results whose
worker reports that same fingerprint count as measurements of it: a result from another device
is committed as a failed trial saying where it ran. Records of another space version are still
measured (never re-measured), but seed the search and train the model only if they replay in
the current space.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunefleet.database import NewRecord, RecordStore, TargetInfo, WorkloadInfo, default_url
from tunefleet.ir import ops, structural_hash
from tunefleet.ir.analysis import bytes_moved, flops
from tunefleet.ir.errors import IRError
from tunefleet.ir.trace import Trace
from tunefleet.workers import (
    BuildConfig,
    BuildInput,
    BuildResult,
    Executor,
    MeasureConfig,
    MeasureResult,
    Problem,
    RunInput,
    Status,
    Target,
    create_executor,
    resolve_target,
)

from .candidates import Candidate, SpaceSampler
from .cost_model import CostModel, Sample, create_cost_model, model_path
from .postproc import default_postprocs
from .space import SpaceContext, SpaceGenerator, rules_for, space_version
from .strategy import SearchStrategy, create_strategy


class TuneError(ValueError):
    """The tuning request is invalid (unknown op, bad shape, empty design space...)."""


class TuneInterrupted(KeyboardInterrupt):
    """Tuning was stopped (Ctrl-C, SIGTERM): what this run committed and what it dropped.

    Trials whose build and run had finished when the stop came are committed with the rest
    of this run's records; the candidates still building or running are dropped unrecorded.
    """

    def __init__(self, committed: int, dropped: int) -> None:
        super().__init__(f"committed {committed} finished trials; dropped {dropped} in flight")
        self.committed = committed
        self.dropped = dropped


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
class TuneResult:
    """What a tuning run achieved; `best_*` cover every record of the pair, this run or not."""

    op: str
    shape: Mapping[str, int]
    dtype: str
    workload_key: str
    target: Mapping[str, Any]
    trials: int
    total_trials: int
    best_ms: float | None
    default_ms: float | None
    gflops: float | None
    gbps: float | None
    failures: int
    strategy: str
    seed: int
    best_trace_json: str | None = field(default=None, repr=False)
    curve: tuple[float | None, ...] = field(default=(), repr=False)
    stale_records: int = 0  # records of another space version that no longer replay
    # (status, count, first line of the first message) per failure status, most common first
    failure_kinds: tuple[tuple[str, int, str], ...] = field(default=(), repr=False)
    noisy: int = 0  # trials of this run timed under contention (recorded noisy, failures)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON the CLI prints (`--json`)."""
        return {
            "workload_key": self.workload_key,
            "target": dict(self.target),
            "trials": self.trials,
            "total_trials": self.total_trials,
            "best_ms": self.best_ms,
            "default_ms": self.default_ms,
            "gflops": self.gflops,
            "gbps": self.gbps,
            "failures": self.failures,
            "stale_records": self.stale_records,
            "noisy": self.noisy,
            "op": self.op,
            "shape": dict(self.shape),
            "dtype": self.dtype,
            "strategy": self.strategy,
            "seed": self.seed,
        }


def default_cache_dir() -> str:
    """Where compiled kernels are cached unless a caller says otherwise."""
    return str(Path("~/.cache/tunefleet/kernels").expanduser())


def default_model_dir() -> str:
    """Where cost models are saved per target unless a caller says otherwise."""
    return str(Path("~/.cache/tunefleet/cost_models").expanduser())


def build_workload(op: str, shape: Mapping[str, int], dtype: str, attrs: Mapping[str, Any]) -> Any:
    """The op's PrimFunc at `shape`, or a TuneError naming what is wrong."""
    try:
        opdef = ops.get_op(op)
    except (KeyError, ValueError, IRError) as err:
        raise TuneError(f"unknown op {op!r}: {err}") from None
    try:
        return opdef.build(dict(shape), dtype, **attrs)
    except (KeyError, TypeError, ValueError, IRError) as err:
        raise TuneError(f"cannot build {op} with shape {dict(shape)} {dtype}: {err}") from None


def _target_info(target: Target) -> TargetInfo:
    info = target.to_info()
    return TargetInfo(
        info["kind"], info["fingerprint"], info["device"], info["arch"], info["details"]
    )


def tune(
    op: str,
    shape: Mapping[str, int],
    *,
    dtype: str = "float32",
    target: str | Target = "cpu",
    trials: int = 64,
    db_url: str | None = None,
    workers: str | Executor = "local",
    strategy: str | SearchStrategy = "evolutionary",
    cost_model: str | CostModel = "xgb",
    seed: int = 0,
    batch_size: int = 16,
    cache_dir: str | None = None,
    model_dir: str | None = None,
    measure_config: MeasureConfig | None = None,
    measure_default: bool = True,
    on_progress: Callable[[Progress], None] | None = None,
    **attrs: Any,
) -> TuneResult:
    """Tune `op` at `shape` on `target` for `trials` new measurements; see the module doc.

    `db_url` None means the database package's default SQLite file; `workers` is "local",
    "ray" or an Executor; `strategy` and `cost_model` are registry names or instances.
    """
    if trials < 0:
        raise TuneError(f"trials must be >= 0 (got {trials})")
    if batch_size < 1:
        raise TuneError(f"batch_size must be >= 1 (got {batch_size})")
    func = build_workload(op, shape, dtype, attrs)
    tgt = resolve_target(target) if isinstance(target, str) else target
    key = structural_hash(func)
    fp = tgt.fingerprint
    ctx = SpaceContext(tgt)
    version = space_version(tgt.kind)
    sketches = SpaceGenerator(*rules_for(tgt.kind)).generate(func, ctx, seed=seed)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs(tgt.kind))
    search = create_strategy(strategy, seed=seed) if isinstance(strategy, str) else strategy
    model = create_cost_model(cost_model, seed=seed) if isinstance(cost_model, str) else cost_model
    mdir = Path(model_dir or default_model_dir())
    model.load(model_path(mdir, fp))
    problem = Problem.create(op, shape, dtype, **attrs)
    mconfig = measure_config or MeasureConfig(seed=seed)
    with RecordStore.open(db_url or default_url()) as store:
        store.ensure_target(_target_info(tgt))
        store.ensure_workload(WorkloadInfo(key, op, dict(shape), dtype, func.to_json()))
        measured = store.measured_hashes(key, fp)
        history = store.history(key, fp)
        top: list[tuple[float, Trace]] = []
        samples: list[Sample] = []
        stale = 0
        for rec in history:
            if rec.status == Status.NOISY:
                continue  # timed under contention: no time to learn from, measured again
            try:
                trace = Trace.from_json(rec.trace_json)
            except (KeyError, ValueError):
                continue
            cand = sampler.from_trace(trace)
            if cand is None and rec.space_version != version:
                stale += 1  # measured, but not a point of the current space
                continue
            if rec.median_ms is not None:
                top.append((rec.median_ms, trace))
            if cand is not None:
                samples.append(Sample(cand.features, key, rec.trace_hash, rec.median_ms))
        model.update(samples)
        top.sort(key=lambda p: p[0])
        search.notify(top[:64])

        owned = isinstance(workers, str)
        executor = (
            create_executor(workers, BuildConfig(cache_dir=cache_dir or default_cache_dir()))
            if isinstance(workers, str)
            else workers
        )
        done, failures = 0, 0
        failed: Counter[str] = Counter()
        first_message: dict[str, str] = {}
        try:
            default_ms = None
            if measure_default:
                (dres,) = measure_batch(
                    executor, [BuildInput(tgt, workload=func, trace=None)], problem, mconfig
                )
                dres = on_target(dres, fp)
                default_ms = dres.median_ms if dres.ok else None
            best_ms = top[0][0] if top else None
            curve: list[float | None] = []
            while done < trials:
                batch = search.generate(sampler, model, measured, min(batch_size, trials - done))
                if not batch:
                    break  # the space has no unmeasured valid candidate left
                finished: dict[int, MeasureResult] = {}
                report = _collector(finished, on_progress, fp, (done, trials), best_ms, failures)
                try:
                    results = measure_batch(
                        executor,
                        [BuildInput(tgt, workload=func, trace=c.trace_json) for c in batch],
                        problem,
                        mconfig,
                        on_result=report,
                    )
                except KeyboardInterrupt as stop:
                    kept = sorted(finished)
                    store.commit([_record(key, fp, version, batch[i], finished[i]) for i in kept])
                    raise TuneInterrupted(done + len(kept), len(batch) - len(kept)) from stop
                results = [on_target(r, fp) for r in results]
                records = [
                    _record(key, fp, version, c, r) for c, r in zip(batch, results, strict=True)
                ]
                store.commit(records)
                new_samples = []
                for cand, res in zip(batch, results, strict=True):
                    done += 1
                    measured.add(cand.trace_hash)  # this run only: a noisy one is retried later
                    ms = res.median_ms if res.ok else None
                    if res.status is not Status.NOISY:  # no time to learn from
                        new_samples.append(Sample(cand.features, key, cand.trace_hash, ms))
                    if ms is None:
                        failures += 1
                        failed[res.status.value] += 1
                        first_message.setdefault(res.status.value, _first_line(res.message))
                    else:
                        top.append((ms, cand.trace))
                        best_ms = ms if best_ms is None else min(best_ms, ms)
                    curve.append(best_ms)
                model.update(new_samples)
                top.sort(key=lambda p: p[0])
                search.notify(top[:64])
        except TuneInterrupted:
            raise
        except KeyboardInterrupt as stop:  # between batches: nothing is in flight
            raise TuneInterrupted(done, 0) from stop
        finally:
            if owned:
                executor.close()
        model.save(model_path(mdir, fp))
        best = store.best(key, fp, 1)
        total = len(measured)
    best_rec = best[0] if best else None
    best_ms = best_rec.median_ms if best_rec else None
    work, nbytes = flops(func, shape), bytes_moved(func, shape)
    return TuneResult(
        op=op,
        shape=dict(shape),
        dtype=dtype,
        workload_key=key,
        target=tgt.to_info(),
        trials=done,
        total_trials=total,
        best_ms=best_ms,
        default_ms=default_ms,
        gflops=work / (best_ms * 1e6) if best_ms else None,
        gbps=nbytes / (best_ms * 1e6) if best_ms else None,
        failures=failures,
        strategy=search.name,
        seed=seed,
        best_trace_json=best_rec.trace_json if best_rec else None,
        curve=tuple(curve),
        stale_records=stale,
        failure_kinds=tuple(
            (status, count, first_message[status]) for status, count in failed.most_common()
        ),
        noisy=failed[Status.NOISY.value],
    )


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


def _record(key: str, fp: str, version: str, cand: Candidate, res: MeasureResult) -> NewRecord:
    ok = res.ok and res.median_ms is not None
    timed = ok or res.status is Status.NOISY  # a noisy record keeps its timings as evidence
    return NewRecord(
        workload_key=key,
        target_fingerprint=fp,
        trace_json=cand.trace_json,
        trace_hash=cand.trace_hash,
        status=res.status.value,
        timings_ms=res.timings_ms if timed else (),
        median_ms=res.median_ms if ok else None,
        error_msg=res.message[:2000],
        space_version=version,
        spread=res.spread if timed else None,
        attempts=res.attempts or None,
    )
