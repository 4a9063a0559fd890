"""The tuning loop for one operator on one target: search, measure, record, learn.

`tune(...)` builds the workload, opens the record store and hands both to a `TaskTuner`
(task_tuner.py), which generates the design space for the target and loads what the database
already knows (measured traces are never measured again; the fastest seed the search; all of
them train the cost model). `tune` measures the untuned default schedule for reference, then
runs the tuner's rounds (the strategy proposes a batch, the executor measures it, every trial
is committed, the cost model is retrained) until `trials` new measurements are made. Trials
recorded `noisy` (timed under contention) teach the cost model nothing and are measured again
by a later run. A second
call on the same database continues from what is there. The result is a frozen `TuneResult`.

Records are filed under the fingerprint of the target being tuned, and only results whose
worker reports that same fingerprint count as measurements of it: a result from another device
is committed as a failed trial saying where it ran. Records of another space version are still
measured (never re-measured), but seed the search and train the model only if they replay in
the current space.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunefleet.database import RecordStore, default_url
from tunefleet.ir import ops
from tunefleet.ir.analysis import bytes_moved, flops
from tunefleet.ir.errors import IRError
from tunefleet.workers import (
    BuildConfig,
    Executor,
    MeasureConfig,
    Problem,
    Status,
    Target,
    create_executor,
    resolve_target,
)

from .cost_model import CostModel, create_cost_model, model_path
from .strategy import SearchStrategy, create_strategy
from .task_tuner import (
    Progress,
    TaskTuner,
    TuneInterrupted,
    measure_batch,
    on_target,
    workload_info,
)

__all__ = [
    "Progress",
    "TuneError",
    "TuneInterrupted",
    "TuneResult",
    "build_workload",
    "measure_batch",
    "on_target",
    "tune",
]


class TuneError(ValueError):
    """The tuning request is invalid (unknown op, bad shape, empty design space...)."""


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
    noisy: int = 0  # trials of this run timed under contention (recorded noisy, failures)
    # (status, count, first line of the first message) per failure status, most common first
    failure_kinds: tuple[tuple[str, int, str], ...] = field(default=(), repr=False)

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
    fp = tgt.fingerprint
    search = create_strategy(strategy, seed=seed) if isinstance(strategy, str) else strategy
    model = create_cost_model(cost_model, seed=seed) if isinstance(cost_model, str) else cost_model
    mdir = Path(model_dir or default_model_dir())
    model.load(model_path(mdir, fp))
    problem = Problem.create(op, shape, dtype, **attrs)
    mconfig = measure_config or MeasureConfig(seed=seed)
    with RecordStore.open(db_url or default_url()) as store:
        tuner = TaskTuner(
            func, problem, tgt, store, workload=workload_info(func, op, shape, dtype),
            strategy=search, cost_model=model, seed=seed, measure_config=mconfig,
        )  # fmt: skip
        owned = isinstance(workers, str)
        executor = (
            create_executor(workers, BuildConfig(cache_dir=cache_dir or default_cache_dir()))
            if isinstance(workers, str)
            else workers
        )
        try:
            default_ms = tuner.measure_default(executor) if measure_default else None
            while tuner.trials < trials:
                n = min(batch_size, trials - tuner.trials)
                if tuner.round(executor, n, on_progress, total=trials).trials == 0:
                    break  # the space has no unmeasured valid candidate left
        except TuneInterrupted:
            raise
        except KeyboardInterrupt as stop:  # between batches: nothing is in flight
            raise TuneInterrupted(tuner.trials, 0) from stop
        finally:
            if owned:
                executor.close()
        model.save(model_path(mdir, fp))
        best = store.best(tuner.key, fp, 1)
        total = len(tuner.measured)
    best_rec = best[0] if best else None
    best_ms = best_rec.median_ms if best_rec else None
    work, nbytes = flops(func, shape), bytes_moved(func, shape)
    return TuneResult(
        op=op,
        shape=dict(shape),
        dtype=dtype,
        workload_key=tuner.key,
        target=tgt.to_info(),
        trials=tuner.trials,
        total_trials=total,
        best_ms=best_ms,
        default_ms=default_ms,
        gflops=work / (best_ms * 1e6) if best_ms else None,
        gbps=nbytes / (best_ms * 1e6) if best_ms else None,
        failures=tuner.failures,
        strategy=search.name,
        seed=seed,
        best_trace_json=best_rec.trace_json if best_rec else None,
        curve=tuple(tuner.curve),
        stale_records=tuner.stale,
        failure_kinds=tuner.failure_kinds(),
        noisy=tuner.failed[Status.NOISY.value],
    )
