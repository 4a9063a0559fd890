"""The `local` executor: builds in a process pool, measurements in supervised runner processes.

Builds are CPU work (trace replay, code generation, the compiler) and run in parallel, one
per core. Measurements do not: one runner per device measures one candidate at a time, so
kernels never compete for the cores or the GPU they are timed on. Runners form lanes keyed by
the artifact's target fingerprint: a CUDA lane holds the GPUs of that fingerprint (every GPU
when none matches; their results then name the device they really ran on).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.executor import Executor, ExecutorError, RoundRobin
from tunefleet.workers.results import BuildResult, MeasureResult, RunInput
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import Target


def ignore_interrupts() -> None:
    """Build workers ignore Ctrl-C: the terminal sends it to the whole foreground group, and
    the command that owns the pool stops them itself (no worker tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class _Lane:
    """One device's runner and the single thread that feeds it candidates in order."""

    runner: Runner
    queue: ThreadPoolExecutor


class LocalExecutor(Executor):
    """Process-pool builds and one runner per device on this machine."""

    name = "local"

    def __init__(
        self,
        build_config: BuildConfig,
        build_workers: int | None = None,
        cuda_devices: Sequence[int] | None = None,
    ) -> None:
        super().__init__(build_config)
        self.build_workers = build_workers or os.cpu_count() or 1
        self._cuda_devices = None if cuda_devices is None else list(cuda_devices)
        self._pool: ProcessPoolExecutor | None = None
        self._lanes: dict[str, RoundRobin] = {}
        self._lock = threading.Lock()
        self._closed = False

    def build(self, batch: Sequence[BuildInput]) -> list[Future[BuildResult]]:
        """Submit each build to the process pool (recreated if a build worker died)."""
        futures = []
        for inp in batch:
            try:
                futures.append(self._build_pool().submit(build, inp, self.build_config))
            except BrokenProcessPool:
                with self._lock:
                    self._pool = None
                futures.append(self._build_pool().submit(build, inp, self.build_config))
        return futures

    def run(self, batch: Sequence[RunInput]) -> list[Future[MeasureResult]]:
        """Queue each artifact on a runner of its target (round robin over matching GPUs)."""
        futures = []
        for inp in batch:
            lane: _Lane = self._lanes_for(inp.artifact.target).pick()
            futures.append(lane.queue.submit(lane.runner.run, inp))
        return futures

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            lanes, self._lanes = self._lanes, {}
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for robin in lanes.values():
            for lane in robin.items:
                lane.queue.shutdown(wait=True, cancel_futures=True)
                lane.runner.close()

    def _build_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise ExecutorError("this executor is closed")
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self.build_workers,
                    mp_context=mp.get_context("spawn"),
                    initializer=ignore_interrupts,
                )
            return self._pool

    def _lanes_for(self, target: Target) -> RoundRobin:
        with self._lock:
            if self._closed:
                raise ExecutorError("this executor is closed")
            robin = self._lanes.get(target.fingerprint)
            if robin is None:
                lanes = [self._lane(target, i) for i in self._devices(target)]
                robin = RoundRobin(lanes)
                self._lanes[target.fingerprint] = robin
            return robin

    def _devices(self, target: Target) -> list[int]:
        if target.is_cpu:
            return [0]
        devices = self._cuda_devices
        if devices is None:
            from tunefleet.workers.targets import detect_cuda

            found = detect_cuda()
            same = [t.index for t in found if t.fingerprint == target.fingerprint]
            devices = same or [t.index for t in found]
        if not devices:
            raise ExecutorError("no CUDA device on this machine to run a cuda artifact")
        return devices

    def _lane(self, target: Target, index: int) -> _Lane:
        kind = target.kind.value
        config = RunnerConfig(
            device=kind, device_index=index, cache_dir=self.build_config.cache_dir
        )
        return _Lane(Runner(config), ThreadPoolExecutor(1, thread_name_prefix=f"run-{kind}{index}"))
