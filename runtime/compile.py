"""The compile path: a model's tasks, the best record of each (task, bucket) for the target,
every kernel built, and a compiled model written to a folder.

For each phase, task and bucket point the record store is asked for the best record of the
task specialised at that point (the workload key a tuning job records under, see
coordinator/job_plan.py) on the target's fingerprint, through the Redis best-schedule cache
when one is given (runtime/best_lookup.py). A record's trace is replayed on the
task's symbolic PrimFunc, so its kernel takes the dims as arguments and serves the whole
bucket; a trace that pins a symbolic extent (a tiling sampled on the constant) cannot be,
and is built on the specialised PrimFunc instead: an `exact` kernel. It serves the sizes of
its bucket up to the point along the row dims (`pad`: the token rows of every kernel but
attention, and attention's batch), the runtime running the point's rows; other sizes of the
bucket run the task's default kernel. A CUDA bucket without a record whose task has a fixed
tensor-core tiling at the point (the GEMM family from 16 rows: prefill, batched decode;
tuner/untuned.py) runs that tiling as an exact kernel; other buckets without a record use
the default schedule, built once per task on the symbolic PrimFunc.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunefleet.coordinator.graph import PINNED, Phase, Quant
from tunefleet.coordinator.job_plan import bucket_points, specialize
from tunefleet.coordinator.models import ModelConfig
from tunefleet.coordinator.roofline import get_target
from tunefleet.coordinator.task_problems import task_dims
from tunefleet.coordinator.tasks import Task, model_tasks
from tunefleet.database import RecordStore, TuningRecord
from tunefleet.ir import structural_hash
from tunefleet.ir.codegen import KernelSource
from tunefleet.runtime.best_lookup import BestLookup
from tunefleet.runtime.dispatch import bucket_ranges
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import (
    DIM_SLOTS,
    KernelArg,
    KernelEntry,
    Launch,
    Manifest,
    TaskEntry,
)
from tunefleet.tuner.space import SpaceContext
from tunefleet.tuner.untuned import fixed_tensor_core_candidate
from tunefleet.workers.builder import BuildConfig, BuildInput, LoweringError, compile_kernel, lower
from tunefleet.workers.cpu_harness import harness_source
from tunefleet.workers.targets import Target

KERNEL_DIR = "kernels"


@dataclass(frozen=True)
class CompileOptions:
    """What to compile and where: the model, the target, the records, the output folder.

    `store` None compiles every kernel with its default schedule. `bests`, when given, is
    asked instead of `store` (the best-schedule cache in front of it, runtime/best_lookup.py).
    `buckets` replaces the phases' default bucket values (use the values the model was tuned
    at). `jobs` is how many compilers run at once.
    """

    model: ModelConfig
    target: Target
    out_dir: str
    build: BuildConfig
    store: RecordStore | None = None
    quant: Quant = Quant.NONE
    buckets: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    jobs: int = 2
    bests: BestLookup | None = None


@dataclass(frozen=True)
class _Planned:
    """A kernel to build: where its schedule comes from and the bucket it serves."""

    task: Task
    point: Mapping[str, int]  # raw bucket values of the point
    dims: Mapping[str, int]  # the task's symbolic dims at the point (prefill m raised to n)
    workload_key: str
    record: TuningRecord | None


def compile_model(options: CompileOptions, on_kernel: Callable[[], None] | None = None) -> Manifest:
    """Compile every task and bucket of the model into `options.out_dir`; the manifest.

    A kernel that cannot be built (its generated C does not compile) raises
    RuntimeModelError naming the task; `on_kernel` is called as each kernel is built.
    """
    out = Path(options.out_dir)
    try:
        (out / KERNEL_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RuntimeModelError(f"{out}: cannot create the output folder: {err}") from None
    fp = options.target.fingerprint
    bests = options.bests
    if bests is None and options.store is not None:
        bests = BestLookup(options.store)
    plans: list[tuple[Phase, Task, list[_Planned]]] = []
    for phase in (Phase.DECODE, Phase.PREFILL):
        for task in model_tasks(options.model, phase, options.quant, buckets=options.buckets):
            planned = []
            for point in bucket_points(task):
                dims = task_dims(task, {**PINNED[phase], **point}) if task.symbolic else {}
                key = structural_hash(specialize(task.func, {**PINNED[phase], **dims}))
                best = bests.best(key, fp) if bests is not None else None
                planned.append(_Planned(task, point, dims, key, best))
            plans.append((phase, task, planned))

    builder = _KernelBuilder(options, out, on_kernel)
    with ThreadPoolExecutor(max(options.jobs, 1)) as pool:
        fallbacks = {id(t): pool.submit(builder.default, t) for _, t, _ in plans}
        tuned = {
            (id(t), i): pool.submit(builder.tuned, p)
            for _, t, ps in plans
            for i, p in enumerate(ps)
            if p.record is not None
        }
        fixed = {
            (id(t), i): pool.submit(builder.fixed, p)
            for _, t, ps in plans
            for i, p in enumerate(ps)
            if p.record is None and not options.target.is_cpu
        }
        entries = []
        for phase, task, planned in plans:
            fallback = fallbacks[id(task)].result()
            kernels = []
            for i, p in enumerate(planned):
                ranges = _ranges(task, p.point)
                made = tuned.get((id(task), i))
                result = made.result() if made is not None else None
                untuned = fixed.get((id(task), i))
                point = untuned.result() if untuned is not None else None
                if result is None and point is not None:  # no record: a fixed tiling, exact
                    kernels.append(_entry(point, p, ranges, None, fp, exact=True))
                elif result is None:
                    kernels.append(_entry(fallback, p, ranges, None, fp))
                else:
                    built, exact = result
                    kernels.append(_entry(built, p, ranges, p.record, fp, exact))
            entries.append(_task_entry(phase, task, kernels, fallback, fp))
    manifest = Manifest(
        model=options.model,
        quant=options.quant.value,
        target_kind=options.target.kind.value,
        target_fingerprint=fp,
        target_device=options.target.device,
        tasks=tuple(entries),
    )
    manifest = _with_estimates(manifest, plans, options.target)
    manifest.write(out)
    return manifest


@dataclass(frozen=True)
class _Built:
    """A compiled kernel written into the model folder."""

    source: str
    binary: str
    entry: str
    args: tuple[KernelArg, ...]
    launch: Launch | None


class _KernelBuilder:
    """Lowers and compiles kernels into the model folder (shared by the pool's threads)."""

    def __init__(self, options: CompileOptions, out: Path, on_kernel: Callable[[], None] | None):
        self.options = options
        self.out = out
        self.on_kernel = on_kernel

    def default(self, task: Task) -> _Built:
        """The task's default schedule on its symbolic PrimFunc."""
        try:
            kernel = lower(self._input(task.func))
        except LoweringError as err:
            raise RuntimeModelError(f"{task.phase}/{task.name}: no default kernel: {err}") from None
        return self._compile(task, kernel)

    def tuned(self, p: _Planned) -> tuple[_Built, bool] | None:
        """The record's trace on the symbolic PrimFunc, else on the one specialised at the
        point (exact); None when it replays on neither (the bucket keeps the default)."""
        assert p.record is not None
        try:
            kernel = lower(self._input(p.task.func, p.record.trace_json))
            exact = False
        except LoweringError:
            func = specialize(p.task.func, {**PINNED[p.task.phase], **p.dims})
            try:
                kernel = lower(self._input(func, p.record.trace_json))
            except LoweringError:
                return None
            exact = True
        return self._compile(p.task, kernel), exact

    def fixed(self, p: _Planned) -> _Built | None:
        """For a CUDA bucket with no record: the first fixed tensor-core tiling of the task
        at the bucket's point (tuner.untuned), built exact; None where the task has none."""
        func = specialize(p.task.func, {**PINNED[p.task.phase], **p.dims})
        found = fixed_tensor_core_candidate(func, SpaceContext(self.options.target))
        if found is None:
            return None
        try:
            kernel = lower(self._input(func, found.trace_json))
        except LoweringError:
            return None
        return self._compile(p.task, kernel)

    def _input(self, func: Any, trace: str | None = None) -> BuildInput:
        """A build of `func` (by `trace`, else its default schedule); CUDA kernels read the
        dims from the session's dims array, so decode steps replay as CUDA graphs."""
        target = self.options.target
        slots = None if target.is_cpu else DIM_SLOTS
        return BuildInput(target, workload=func, trace=trace, dim_slots=slots)

    def _compile(self, task: Task, kernel: KernelSource) -> _Built:
        result = compile_kernel(kernel, self.options.target, self.options.build)
        if result.artifact is None:
            first = result.message.strip().splitlines()[:1]
            raise RuntimeModelError(
                f"{task.phase}/{task.name}: the kernel does not compile: "
                f"{first[0] if first else result.status}"
            )
        art = result.artifact
        stem = art.key[:20]
        suffix = ".so" if self.options.target.is_cpu else ".cubin"
        src_suffix = ".c" if self.options.target.is_cpu else ".cu"
        source = f"{KERNEL_DIR}/{stem}{src_suffix}"
        binary = f"{KERNEL_DIR}/{stem}{suffix}"
        text = kernel.source + (harness_source(kernel) if self.options.target.is_cpu else "")
        (self.out / source).write_text(text)
        # a new file renamed over the old: a process that has the old one loaded keeps its
        # mapping (rewriting a loaded shared library in place crashes that process)
        part = self.out / f"{binary}.{threading.get_ident()}.part"
        part.write_bytes(art.binary)
        os.replace(part, self.out / binary)
        if self.on_kernel is not None:
            self.on_kernel()
        args = tuple(KernelArg(a.name, a.kind, a.dtype, tuple(a.shape)) for a in art.args)
        launch = None
        if art.grid is not None and art.block is not None:
            launch = Launch(
                tuple(art.grid), tuple(art.block), art.shared_bytes or 0, kernel.dim_slots
            )
        return _Built(source, binary, art.entry, args, launch)


def paddable(task: Task) -> tuple[str, ...]:
    """Symbolic dims along which the task's rows are computed independently: every dim of a
    row-wise kernel (tokens), none of attention (its kv length and its queries' causal
    positions change the result, and a decode step reads the cache `[max_len, b, kv, d]`
    in place, whose row stride is the session's batch)."""
    if task.kind == "attention":
        return ()
    return task.symbolic


def _ranges(task: Task, point: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """The sizes of each symbolic dim the bucket point holds."""
    out = {}
    for name, values in task.buckets:
        reps = sorted(set(values))
        out[name] = bucket_ranges(reps)[reps.index(point[name])]
    return out


def _entry(
    built: _Built,
    p: _Planned,
    ranges: Mapping[str, tuple[int, int]],
    record: TuningRecord | None,
    fingerprint: str,
    exact: bool = False,
) -> KernelEntry:
    return KernelEntry(
        bucket=dict(p.dims),
        ranges=dict(ranges),
        exact=exact,
        pad=paddable(p.task) if exact else (),
        record_id=None if record is None else record.id,
        workload_key=p.workload_key,
        target_fingerprint=fingerprint,
        median_ms=None if record is None else record.median_ms,
        source=built.source,
        binary=built.binary,
        entry=built.entry,
        args=built.args,
        launch=built.launch,
    )


def _task_entry(
    phase: Phase, task: Task, kernels: Sequence[KernelEntry], fallback: _Built, fp: str
) -> TaskEntry:
    default = KernelEntry(
        bucket={},
        ranges={name: (1, 0) for name in task.symbolic},
        exact=False,
        pad=(),
        record_id=None,
        workload_key=task.workload_key,
        target_fingerprint=fp,
        median_ms=None,
        source=fallback.source,
        binary=fallback.binary,
        entry=fallback.entry,
        args=fallback.args,
        launch=fallback.launch,
    )
    return TaskEntry(
        name=task.name,
        phase=phase.value,
        calls=task.names,
        op=task.op,
        kind=task.kind,
        weight=task.weight,
        workload_key=task.workload_key,
        symbolic=task.symbolic,
        buckets={k: tuple(v) for k, v in task.buckets},
        kernels=tuple(kernels),
        fallback=default,
    )


def _with_estimates(
    manifest: Manifest, plans: Sequence[tuple[Phase, Task, list[_Planned]]], target: Target
) -> Manifest:
    """Estimated time of one pass per phase at its first bucket point: each task's measured
    median where its kernel there is tuned, its roofline time on the target otherwise."""
    roof = get_target("cpu" if target.is_cpu else "h100")
    totals: dict[str, float] = {}
    for (phase, task, planned), entry in zip(plans, manifest.tasks, strict=True):
        first, kernel = planned[0], entry.kernels[0]
        dims: dict[str, Any] = {**PINNED[phase], **first.dims}
        if kernel.median_ms is not None:
            ms = kernel.median_ms
        else:
            ms = roof.seconds(task.flops(dims), task.nbytes(dims), task.dtype) * 1e3
        totals[phase.value] = totals.get(phase.value, 0.0) + task.weight * ms
    return replace(manifest, estimated_ms=totals)
