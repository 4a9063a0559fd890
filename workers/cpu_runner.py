"""Check and time a compiled C kernel (a shared library) inside a runner's worker process.

This code runs in the child process that `runner.Runner` supervises: a kernel that segfaults
or hangs takes only that process down, and the supervisor records it and starts a new one.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tunefleet.workers.checking import compare_outputs
from tunefleet.workers.compile_cache import CompileCache
from tunefleet.workers.cpu_harness import TIMER_SYMBOL
from tunefleet.workers.cpu_load import contention, own_wait_ns, sample_cpu, wait_for_quiet
from tunefleet.workers.inputs import WorkloadCache, WorkloadData, prepare, signature
from tunefleet.workers.noise import Attempt, Contention, guarded_timing
from tunefleet.workers.results import MeasureConfig, MeasureResult, RunInput, Status
from tunefleet.workers.targets import cpu_cache_bytes, detect_cpu


def time_calls(run: Callable[[int, int], float], config: MeasureConfig) -> tuple[list[float], int]:
    """Per-call times (ms) of each repeat and the calls per repeat.

    `run(first, count)` makes `count` calls starting at input set `first` (the sets rotate)
    and returns the nanoseconds they took. Warm up for `warmup_ms` with doubling batches,
    size each repeat to last at least `min_repeat_ms`, then time `repeats` repeats.
    """
    timings, number, _ = timed_repeats(run, config, lambda: 0)
    return timings, number


def timed_repeats(
    run: Callable[[int, int], float], config: MeasureConfig, waited_ns: Callable[[], int]
) -> tuple[list[float], int, list[float]]:
    """`time_calls`, and per repeat the share of its time this process's threads waited for
    a core (`waited_ns()` reads their cumulative run delay)."""
    limit = config.max_calls_per_repeat
    spent, calls, batch = 0.0, 0, 1
    while spent < config.warmup_ms * 1e6 and calls < limit:
        spent += run(calls, batch)
        calls += batch
        batch = min(batch * 2, limit)
    target_ns = config.min_repeat_ms * 1e6
    number = int(min(limit, max(1, -(-target_ns // max(spent / max(calls, 1), 1.0)))))
    index = calls
    for _ in range(8):  # the warm-up estimate can be off: grow until a repeat is long enough
        took = run(index, number)
        index += number
        if took >= target_ns or number >= limit:
            break
        number = int(min(limit, max(number + 1, -(-number * 1.2 * target_ns // max(took, 1)))))
    timings, waits = [], []
    for _ in range(config.repeats):
        before = waited_ns()
        took = run(index, number)
        waits.append((waited_ns() - before) / max(took, 1.0))
        timings.append(took / number / 1e6)
        index += number
    return timings, number, waits


def time_guarded(
    run: Callable[[int, int], float], config: MeasureConfig, cores: frozenset[int]
) -> tuple[Attempt, int]:
    """`time_calls` under the noise guard: wait for quiet cores, time, judge the repeats and
    the contention on `cores` while they ran, re-time a noisy attempt (see MeasureConfig)."""
    limits = config.noise_limits

    def quiet() -> None:
        if config.guard_noise and config.quiet_wait_s > 0:
            wait_for_quiet(limits.max_other_load, config.quiet_wait_s, cores)

    def once() -> tuple[list[float], int, Contention]:
        before = sample_cpu(cores)
        timings, number, waits = timed_repeats(run, config, own_wait_ns)
        seen = contention(before, sample_cpu(cores))
        return timings, number, dataclasses.replace(seen, repeat_waits=tuple(waits))

    retimes = config.noise_retimes if config.guard_noise else 0
    deadline = time.monotonic() + config.timeout_s / 2
    return guarded_timing(once, limits, retimes, deadline, quiet)


def python_loop(fn: Callable[..., None], arg_sets: Sequence[tuple[int, ...]]) -> Callable:
    """A `run(first, count)` that calls through ctypes (for libraries without the timer)."""
    clock, n_sets = time.perf_counter_ns, len(arg_sets)

    def run(first: int, count: int) -> float:
        t0 = clock()
        for c in range(first, first + count):
            fn(*arg_sets[c % n_sets])
        return float(clock() - t0)

    return run


def native_loop(lib: ctypes.CDLL, data: WorkloadData) -> Callable | None:
    """A `run(first, count)` using the timing loop compiled into the library, if it has one."""
    timer = getattr(lib, TIMER_SYMBOL, None)
    if timer is None:
        return None
    timer.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p, ctypes.c_void_p]
    timer.restype = ctypes.c_int64
    n_buffers = len(data.sets[0])
    pointers = [b.ctypes.data for bufs in data.sets for b in bufs]
    buffers = (ctypes.c_void_p * max(len(pointers), 1))(*pointers)
    scalars = (ctypes.c_int64 * max(len(data.scalars), 1))(*data.scalars)
    n_sets = len(data.sets) if n_buffers else 1

    def run(first: int, count: int) -> float:
        return float(timer(first, count, n_sets, buffers, scalars))

    return run


def _pin_openmp_runtimes() -> list[ctypes.CDLL]:
    """Load the OpenMP runtimes for good, so unloading a kernel never unloads the runtime
    under its still-running thread pool (which crashes the process)."""
    pinned = []
    for name in ("gomp", "omp"):
        path = ctypes.util.find_library(name)
        if path:
            try:
                pinned.append(ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
            except OSError:
                pass
    return pinned


class CpuMeasurer:
    """Loads shared libraries with ctypes and measures them against the workload's reference."""

    def __init__(self, cache_dir: str) -> None:
        self.cache = CompileCache(cache_dir)
        self.cache_bytes = cpu_cache_bytes()
        self.target = detect_cpu()
        self.device = self.target.device
        self.workloads = WorkloadCache()
        # the cores this worker may use, read before an OpenMP pool binds its threads
        self.cores = frozenset(os.sched_getaffinity(0))
        self._runtimes = _pin_openmp_runtimes()

    def data(self, inp: RunInput) -> WorkloadData:
        """The workload's inputs and reference, drawn on first use and reused afterwards."""
        key = signature(inp.problem, inp.artifact.args, inp.config)
        data = self.workloads.get(key)
        if data is None:
            data = prepare(inp.problem, inp.artifact.args, inp.config, self.cache_bytes)
            self.workloads.put(key, data)
        return data

    def measure(self, inp: RunInput, data: WorkloadData) -> tuple[MeasureResult, bool]:
        """Check then time one artifact; the flag says whether this process must be replaced."""
        start = time.perf_counter()
        art = inp.artifact
        if not art.target.is_cpu:
            return self._result(Status.RUN_ERROR, start, f"a {art.target.kind} artifact"), False
        path = self.cache.ensure_file(art.key, ".so", art.binary)
        try:
            lib = ctypes.CDLL(str(Path(path).resolve()))
        except OSError as err:
            return self._result(Status.RUN_ERROR, start, f"cannot load library: {err}"), False
        try:
            return self._measure_loaded(lib, inp, data, start), False
        finally:
            _ctypes.dlclose(lib._handle)

    def _measure_loaded(
        self, lib: ctypes.CDLL, inp: RunInput, data: WorkloadData, start: float
    ) -> MeasureResult:
        art = inp.artifact
        try:
            fn = getattr(lib, art.entry)
        except AttributeError:
            return self._result(Status.RUN_ERROR, start, f"no symbol {art.entry!r} in library")
        n_buffers = sum(1 for a in art.args if a.kind == "buffer")
        fn.argtypes = [ctypes.c_void_p] * n_buffers + [ctypes.c_int64] * len(data.scalars)
        fn.restype = None
        arg_sets: Sequence[tuple[int, ...]] = [
            (*(b.ctypes.data for b in bufs), *data.scalars) for bufs in data.sets
        ]

        data.poison_outputs(0)
        fn(*arg_sets[0])
        rtol = inp.config.tolerance(inp.problem.dtype)
        out_dtypes = data.buffer_dtypes[data.n_inputs :]
        err, bad = compare_outputs(
            data.outputs(0), out_dtypes, data.reference, rtol, data.reference_scales
        )
        if bad:
            return MeasureResult.wrong(bad, rtol, err, start, self.device)

        run = native_loop(lib, data) or python_loop(fn, arg_sets)
        attempt, attempts = time_guarded(run, inp.config, self.cores)
        return MeasureResult.timed(attempt, attempts, err, len(arg_sets), start, self.device)

    def _result(self, status: Status, start: float, message: str) -> MeasureResult:
        return MeasureResult.failed(status, start, message, self.device)
