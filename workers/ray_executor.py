"""The `ray` executor: builds as Ray tasks on CPUs, measurements in runner actors.

One runner actor per GPU (`num_gpus=1`, restarted automatically if it dies), or CPU runner
actors where the cluster has no GPU. Each actor wraps the same supervised `Runner` as the
local executor, so a faulting kernel costs a worker process, not the actor. Connects to an
existing cluster when given an address; starts a quiet local instance otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.executor import Executor, ExecutorError, RoundRobin
from tunefleet.workers.results import BuildResult, MeasureResult, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig


class RunnerActor:
    """A Ray actor around one Runner bound to one device."""

    def __init__(self, config: RunnerConfig) -> None:
        self.runner = Runner(config)

    def run(self, inp: RunInput) -> MeasureResult:
        return self.runner.run(inp)

    def close(self) -> None:
        self.runner.close()


class RayExecutor(Executor):
    """Ray tasks for builds and runner actors per device; same interface as `local`."""

    name = "ray"

    def __init__(
        self,
        build_config: BuildConfig,
        address: str | None = None,
        num_cpus: int | None = None,
        cpu_runners: int = 1,
    ) -> None:
        super().__init__(build_config)
        import ray

        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                ray.init(
                    address="local",  # a new instance, even where `ray start` left one
                    num_cpus=num_cpus,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                    configure_logging=True,
                )
                self._started = True
        self._build_task = ray.remote(num_cpus=1, max_retries=0)(build)
        self._actor_cls = ray.remote(RunnerActor)
        self._cpu_runners = cpu_runners
        self._lanes: dict[str, RoundRobin] = {}
        self._lock = threading.Lock()  # build callbacks may ask for runners concurrently
        self._closed = False

    def build(self, batch: Sequence[BuildInput]) -> list[Future[BuildResult]]:
        """One Ray task per build; artifacts come back with their bytes through the store."""
        self._check_open()
        return [self._build_task.remote(inp, self.build_config).future() for inp in batch]

    def run(self, batch: Sequence[RunInput]) -> list[Future[MeasureResult]]:
        """Send each artifact to a runner actor of its kind; a lost actor is a run_error."""
        self._check_open()
        futures = []
        for inp in batch:
            actor = self._lanes_for(inp.artifact.target_kind).pick()
            outcome: Future[MeasureResult] = Future()
            _chain_actor_call(actor.run.remote(inp).future(), outcome)
            futures.append(outcome)
        return futures

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        with self._lock:
            actors = [a for robin in self._lanes.values() for a in robin.items]
            self._lanes = {}
        try:
            ray.get([a.close.remote() for a in actors], timeout=30)
        except Exception:  # an actor that is already gone needs no closing
            pass
        for actor in actors:
            ray.kill(actor)
        if self._started:
            ray.shutdown()

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorError("this executor is closed")

    def _lanes_for(self, kind: str) -> RoundRobin:
        with self._lock:
            robin = self._lanes.get(kind)
            if robin is None:
                robin = RoundRobin(self._start_actors(kind))
                self._lanes[kind] = robin
            return robin

    def _start_actors(self, kind: str) -> list[Any]:
        cache_dir = self.build_config.cache_dir
        restart = {"max_restarts": -1, "max_task_retries": 0}
        if kind == "cuda":
            gpus = int(self._ray.cluster_resources().get("GPU", 0))
            if gpus == 0:
                raise ExecutorError("the Ray cluster has no GPU to run a cuda artifact")
            # Ray sets CUDA_VISIBLE_DEVICES per actor, so each sees its GPU as device 0
            config = RunnerConfig(device="cuda", device_index=0, cache_dir=cache_dir)
            options = {"num_gpus": 1, "num_cpus": 0, **restart}
            return [self._actor_cls.options(**options).remote(config) for _ in range(gpus)]
        if kind == "cpu":
            config = RunnerConfig(device="cpu", device_index=0, cache_dir=cache_dir)
            options = {"num_cpus": 1, **restart}
            count = self._cpu_runners
            return [self._actor_cls.options(**options).remote(config) for _ in range(count)]
        raise ExecutorError(f"no runner for target kind {kind!r}")


def _chain_actor_call(source: Future[MeasureResult], target: Future[MeasureResult]) -> None:
    """Resolve `target` with the actor's result; an actor that died becomes a run_error."""

    def done(f: Future[MeasureResult]) -> None:
        try:
            target.set_result(f.result())
        except Exception as err:
            message = f"runner actor failed: {type(err).__name__}: {err}"
            target.set_result(MeasureResult(Status.RUN_ERROR, message=message[:2000]))

    source.add_done_callback(done)
