"""Check and time a compiled C kernel (a shared library) inside a runner's worker process.

This code runs in the child process that `runner.Runner` supervises: a kernel that segfaults
or hangs takes only that process down, and the supervisor records it and starts a new one.
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tunefleet.workers.checking import compare_outputs
from tunefleet.workers.compile_cache import CompileCache
from tunefleet.workers.inputs import WorkloadCache, WorkloadData, prepare, signature
from tunefleet.workers.results import MeasureConfig, MeasureResult, RunInput, Status
from tunefleet.workers.targets import cpu_cache_bytes, detect_cpu


def time_calls(
    call: Callable[[int], None], n_sets: int, config: MeasureConfig
) -> tuple[list[float], int]:
    """Per-call times (ms) of each repeat and the calls per repeat, rotating input sets.

    Warm up for `warmup_ms`, size each repeat to last at least `min_repeat_ms`, then time
    `repeats` repeats with perf_counter_ns.
    """
    clock = time.perf_counter_ns
    calls, start = 0, clock()
    while True:
        call(calls % n_sets)
        calls += 1
        elapsed = clock() - start
        if elapsed >= config.warmup_ms * 1e6 or calls >= config.max_calls_per_repeat:
            break
    target_ns = config.min_repeat_ms * 1e6
    limit = config.max_calls_per_repeat
    number = int(min(limit, max(1, -(-target_ns // max(elapsed / calls, 1.0)))))
    for _ in range(8):  # the warm-up estimate can be off: grow until a repeat is long enough
        t0 = clock()
        for i in range(number):
            call(i % n_sets)
        took = clock() - t0
        if took >= target_ns or number >= limit:
            break
        number = int(min(limit, max(number + 1, -(-number * 1.2 * target_ns // max(took, 1)))))
    timings = []
    index = 0
    for _ in range(config.repeats):
        t0 = clock()
        for _ in range(number):
            call(index)
            index = (index + 1) % n_sets
        timings.append((clock() - t0) / number / 1e6)
    return timings, number


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
        self.device = detect_cpu().device
        self.workloads = WorkloadCache()
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
        if art.target_kind != "cpu":
            return self._result(Status.RUN_ERROR, start, f"a {art.target_kind} artifact"), False
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
            message = f"{bad} elements off by more than {rtol:g} relative (max {err:.3g})"
            return self._result(Status.WRONG_RESULT, start, message, max_rel_err=err)

        timings, number = time_calls(lambda i: fn(*arg_sets[i]), len(arg_sets), inp.config)
        return MeasureResult(
            status=Status.OK,
            median_ms=statistics.median(timings),
            timings_ms=tuple(timings),
            max_rel_err=err,
            calls_per_repeat=number,
            input_sets=len(arg_sets),
            run_s=time.perf_counter() - start,
            device=self.device,
        )

    def _result(
        self, status: Status, start: float, message: str, max_rel_err: float | None = None
    ) -> MeasureResult:
        return MeasureResult(
            status=status,
            message=message,
            max_rel_err=max_rel_err,
            run_s=time.perf_counter() - start,
            device=self.device,
        )
