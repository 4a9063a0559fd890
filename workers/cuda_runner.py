"""Check and time a cubin on one GPU through pycuda, inside a runner's worker process.

A faulting kernel (an illegal address) poisons the CUDA context for good, so after any CUDA
error this measurer asks its supervisor to replace the process. pycuda is imported here
only, so everything else imports without the `[cuda]` extra.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from tunefleet.workers.checking import INT_POISON, compare_outputs
from tunefleet.workers.gpu_load import GpuWatch
from tunefleet.workers.inputs import WorkloadCache, WorkloadData, prepare, signature
from tunefleet.workers.launch import LaunchExprError, evaluate, evaluate_all
from tunefleet.workers.noise import Contention, guarded_timing
from tunefleet.workers.results import MeasureConfig, MeasureResult, RunInput, Status
from tunefleet.workers.targets import cuda_device_target

STATIC_SHARED_LIMIT = 48 * 1024


class CudaMeasurer:
    """Owns one CUDA context on one device; device copies of input sets live per workload."""

    def __init__(self, device_index: int = 0) -> None:
        import pycuda.driver as cuda

        self.cuda = cuda
        cuda.init()
        dev = cuda.Device(device_index)
        self.ctx = dev.make_context()
        self.target = cuda_device_target(cuda, device_index)
        self.device = dev.name()
        self.l2_bytes = dev.get_attribute(cuda.device_attribute.L2_CACHE_SIZE)
        self.workloads = WorkloadCache(capacity=2)
        self._flush: Any = None
        self._watch: GpuWatch | None = None
        try:  # nvidia-smi's order may differ from CUDA's: name the device by its bus id
            self._bus_id = str(dev.pci_bus_id())
        except (AttributeError, cuda.Error):
            self._bus_id = str(device_index)

    def watch(self, config: MeasureConfig) -> GpuWatch:
        """The nvidia-smi watch of this device (other processes, SM clock)."""
        if self._watch is None or self._watch.count_processes != config.count_gpu_processes:
            self._watch = GpuWatch(self._bus_id, config.count_gpu_processes)
        return self._watch

    def close(self) -> None:
        self.ctx.pop()

    def data(self, inp: RunInput) -> tuple[WorkloadData, list[list[Any]], list[np.ndarray]]:
        """Host data, its device copies (a list of allocations per input set) and page-locked
        host buffers that the checked outputs are copied back into."""
        key = signature(inp.problem, inp.artifact.args, inp.config)
        cached = self.workloads.get(key)
        if cached is None:
            host = prepare(inp.problem, inp.artifact.args, inp.config, self.l2_bytes)
            device = [[self.cuda.to_device(buf) for buf in bufs] for bufs in host.sets]
            pinned = [self.cuda.pagelocked_empty(o.shape, o.dtype) for o in host.outputs(0)]
            cached = (host, device, pinned)
            self.workloads.put(key, cached)
        return cached

    def measure(self, inp: RunInput, prepared: Any) -> tuple[MeasureResult, bool]:
        """Check then time one cubin; the flag is True when the context must be replaced."""
        host, device, pinned = prepared
        start = time.perf_counter()
        try:
            return self._measure(inp, host, device, pinned, start), False
        except LaunchExprError as err:
            return self._result(Status.RUN_ERROR, start, str(err)), False
        except self.cuda.Error as err:
            message = f"CUDA error: {type(err).__name__}: {err}".strip()
            return self._result(Status.RUN_ERROR, start, message), True

    def _measure(
        self,
        inp: RunInput,
        host: WorkloadData,
        device: list[list[Any]],
        pinned: list[np.ndarray],
        start: float,
    ) -> MeasureResult:
        cuda, art, config = self.cuda, inp.artifact, inp.config
        dims = inp.problem.dim_values
        grid = evaluate_all(art.grid, dims)
        block = evaluate_all(art.block, dims)
        shared = evaluate(art.shared_bytes or 0, dims)
        module = cuda.module_from_buffer(art.binary)
        fn = module.get_function(art.entry)
        if shared > STATIC_SHARED_LIMIT:
            attr = cuda.function_attribute.MAX_DYNAMIC_SHARED_SIZE_BYTES
            fn.set_attribute(attr, shared)
        n_buffers = sum(1 for a in art.args if a.kind == "buffer")
        fn.prepare("P" * n_buffers + "q" * len(host.scalars))
        arg_sets = [(*(int(d) for d in bufs), *host.scalars) for bufs in device]

        def launch(index: int) -> None:
            fn.prepared_call(grid, block, *arg_sets[index], shared_size=shared)

        # the checked run: outputs poisoned on the device, copied back, compared
        n_in = host.n_inputs
        out_dtypes = host.buffer_dtypes[n_in:]
        for dev_buf, out, dtype in zip(device[0][n_in:], pinned, out_dtypes, strict=True):
            self._poison(dev_buf, dtype, out.nbytes)
        launch(0)
        self.ctx.synchronize()
        for out, dev_buf in zip(pinned, device[0][n_in:], strict=True):
            cuda.memcpy_dtoh(out, dev_buf)
        rtol = config.tolerance(inp.problem.dtype)
        err, bad = compare_outputs(pinned, out_dtypes, host.reference, rtol, host.reference_scales)
        if bad:
            return MeasureResult.wrong(bad, rtol, err, start, self.device)

        watch = self.watch(config)

        def once() -> tuple[list[float], int, Contention]:
            timings, number = self._time(launch, len(arg_sets), config)
            notes = watch.notes() if config.guard_noise else ()
            return timings, number, Contention(notes=notes)

        def quiet() -> None:
            time.sleep(config.quiet_wait_s)
            watch.refresh()

        retimes = config.noise_retimes if config.guard_noise else 0
        deadline = time.monotonic() + config.timeout_s / 2
        attempt, attempts = guarded_timing(once, config.noise_limits, retimes, deadline, quiet)
        return MeasureResult.timed(attempt, attempts, err, len(arg_sets), start, self.device)

    def _time(self, launch: Any, n_sets: int, config: MeasureConfig) -> tuple[list[float], int]:
        """Per-launch times (ms) from CUDA events; one launch a repeat when flushing L2."""
        cuda = self.cuda
        begin, end = cuda.Event(), cuda.Event()
        calls = 0
        begin.record()
        while True:
            launch(calls % n_sets)
            calls += 1
            end.record()
            end.synchronize()
            elapsed = end.time_since(begin)
            if elapsed >= config.warmup_ms or calls >= config.max_calls_per_repeat:
                break
        per_call = max(elapsed / calls, 1e-4)
        if config.flush_l2:
            number = 1
            flush = self._flush_buffer()
        else:
            number = int(
                min(config.max_calls_per_repeat, max(1, -(-config.min_repeat_ms // per_call)))
            )
        timings, index = [], 0
        for rep in range(config.repeats):
            if config.flush_l2:
                cuda.memset_d32(flush[0], rep, flush[1])
            begin.record()
            for _ in range(number):
                launch(index)
                index = (index + 1) % n_sets
            end.record()
            end.synchronize()
            timings.append(end.time_since(begin) / number)
        return timings, number

    def _poison(self, buf: Any, dtype: str, nbytes: int) -> None:
        """Fill an output on the device with NaN (floats) or a byte pattern (integers)."""
        cuda = self.cuda
        if dtype in ("float32", "float64"):  # 0x7FF80000 twice is a float64 NaN too
            cuda.memset_d32(buf, 0x7FC00000 if dtype == "float32" else 0x7FF80000, nbytes // 4)
        elif dtype in ("float16", "bfloat16"):
            cuda.memset_d16(buf, 0x7E00 if dtype == "float16" else 0x7FC0, nbytes // 2)
        else:
            cuda.memset_d8(buf, INT_POISON, nbytes)

    def _flush_buffer(self) -> tuple[Any, int]:
        """A device buffer twice the L2 size; writing it evicts the kernel's data from L2."""
        if self._flush is None:
            words = max(self.l2_bytes, 1 << 20) * 2 // 4
            self._flush = (self.cuda.mem_alloc(words * 4), words)
        return self._flush

    def _result(self, status: Status, start: float, message: str) -> MeasureResult:
        return MeasureResult.failed(status, start, message, self.device)
