"""The `ray` executor: builds as Ray tasks on CPUs, measurements in runner actors.

Runner actors form lanes keyed by the artifact's target fingerprint. Where nodes advertise
the Ray custom resource `tunefleet_target:<fingerprint>` (`ray start --resources`), a lane
has one actor per unit of that resource and each actor is placed on such a node; where no
node advertises it, placement falls back to the kind: one actor per GPU (`num_gpus=1`) or
`cpu_runners` CPU actors. Actors restart automatically if they die and wrap the same
supervised `Runner` as the local executor, so a faulting kernel costs a worker process, not
the actor. Connects to an existing cluster when given an address; starts a quiet local
instance otherwise.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.executor import Executor, ExecutorError, RoundRobin
from tunefleet.workers.results import BuildResult, MeasureResult, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import Target

TARGET_RESOURCE_PREFIX = "tunefleet_target:"


def target_resource(fingerprint: str) -> str:
    """The Ray custom resource a node advertises for each device of a target fingerprint."""
    return TARGET_RESOURCE_PREFIX + fingerprint


class RunnerActor:
    """A Ray actor around one Runner bound to one device."""

    def __init__(self, config: RunnerConfig) -> None:
        self.runner = Runner(config)

    def run(self, inp: RunInput) -> MeasureResult:
        return self.runner.run(inp)

    def close(self) -> None:
        self.runner.close()


class RayExecutor(Executor):
    """Ray tasks for builds and runner actors per device; same interface as `local`.

    `simulated_targets` (simulated fleets and tests only) maps a lane's fingerprint to the
    target its runners impersonate: they report that target instead of detecting their own.
    """

    name = "ray"

    def __init__(
        self,
        build_config: BuildConfig,
        address: str | None = None,
        num_cpus: int | None = None,
        cpu_runners: int = 1,
        simulated_targets: Mapping[str, Target] | None = None,
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
        self._simulated = dict(simulated_targets or {})
        self._lanes: dict[str, RoundRobin] = {}
        self._lock = threading.Lock()  # build callbacks may ask for runners concurrently
        self._closed = False

    def build(self, batch: Sequence[BuildInput]) -> list[Future[BuildResult]]:
        """One Ray task per build; artifacts come back with their bytes through the store."""
        self._check_open()
        return [self._build_task.remote(inp, self.build_config).future() for inp in batch]

    def run(self, batch: Sequence[RunInput]) -> list[Future[MeasureResult]]:
        """Send each artifact to a runner actor of its target; a lost actor is a run_error."""
        self._check_open()
        futures = []
        for inp in batch:
            actor = self._lanes_for(inp.artifact.target).pick()
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

    def _lanes_for(self, target: Target) -> RoundRobin:
        with self._lock:
            robin = self._lanes.get(target.fingerprint)
            if robin is None:
                robin = RoundRobin(self._start_actors(target))
                self._lanes[target.fingerprint] = robin
            return robin

    def _start_actors(self, target: Target) -> list[Any]:
        """The lane's actors: on nodes advertising the target's resource, else by kind."""
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so each sees its GPU as device 0
        config = RunnerConfig(
            device=target.kind.value,
            device_index=0,
            cache_dir=self.build_config.cache_dir,
            simulated_target=self._simulated.get(target.fingerprint),
        )
        resources = self._ray.cluster_resources()
        options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
        options |= {"num_gpus": 1, "num_cpus": 0} if target.is_gpu else {"num_cpus": 1}
        advertised = int(resources.get(target_resource(target.fingerprint), 0))
        if advertised:
            options["resources"] = {target_resource(target.fingerprint): 1}
            count = advertised
        elif target.is_gpu:
            count = int(resources.get("GPU", 0))
            if count == 0:
                raise ExecutorError("the Ray cluster has no GPU to run a cuda artifact")
        else:
            count = self._cpu_runners
        return [self._actor_cls.options(**options).remote(config) for _ in range(count)]


def _chain_actor_call(source: Future[MeasureResult], target: Future[MeasureResult]) -> None:
    """Resolve `target` with the actor's result; an actor that died becomes a run_error."""

    def done(f: Future[MeasureResult]) -> None:
        try:
            target.set_result(f.result())
        except Exception as err:
            message = f"runner actor failed: {type(err).__name__}: {err}"
            target.set_result(MeasureResult(Status.RUN_ERROR, message=message[:2000]))

    source.add_done_callback(done)
