"""The executor interface: batches in, futures out, for builds, runs and whole measurements.

Two implementations share it and are chosen by name: `local` (process pools on this machine)
and `ray` (Ray tasks for builds, one runner actor per GPU). Callers (the tuner, the CLI)
depend only on this module.
"""

from __future__ import annotations

import dataclasses
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tunefleet.workers.builder import BuildConfig, BuildInput
from tunefleet.workers.results import (
    BuildResult,
    MeasureConfig,
    MeasureResult,
    Problem,
    RunInput,
    Status,
)

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class MeasureInput:
    """One candidate end to end: what to build, and the problem its kernel must solve."""

    build: BuildInput
    problem: Problem
    config: MeasureConfig = field(default_factory=MeasureConfig)


class ExecutorError(RuntimeError):
    """An executor cannot be created or has been closed."""


class Executor(ABC):
    """Builds and runs batches of candidates; every call returns one future per input."""

    name = "abstract"

    def __init__(self, build_config: BuildConfig) -> None:
        self.build_config = build_config

    @abstractmethod
    def build(self, batch: Sequence[BuildInput]) -> list[Future[BuildResult]]:
        """Start building each input (in parallel); futures resolve to BuildResults."""

    @abstractmethod
    def run(self, batch: Sequence[RunInput]) -> list[Future[MeasureResult]]:
        """Queue each artifact on a runner of its target kind; futures resolve to results."""

    @abstractmethod
    def close(self) -> None:
        """Stop pools, runners and anything this executor started."""

    def measure(self, batch: Sequence[MeasureInput]) -> list[Future[MeasureResult]]:
        """Build then run each candidate; a failed build resolves to its status directly."""
        builds = self.build([m.build for m in batch])
        outcomes: list[Future[MeasureResult]] = []
        for item, built in zip(batch, builds, strict=True):
            outcome: Future[MeasureResult] = Future()
            built.add_done_callback(self._after_build(item, outcome))
            outcomes.append(outcome)
        return outcomes

    def measure_all(self, batch: Sequence[MeasureInput]) -> list[MeasureResult]:
        """`measure` and wait for every result, in input order."""
        return [f.result() for f in self.measure(batch)]

    def _after_build(
        self, item: MeasureInput, outcome: Future[MeasureResult]
    ) -> Callable[[Future[BuildResult]], None]:
        def done(built: Future[BuildResult]) -> None:
            try:
                result = built.result()
            except Exception as err:  # a lost build worker is that candidate's build_error
                message = f"build failed: {type(err).__name__}: {err}"
                outcome.set_result(MeasureResult(Status.BUILD_ERROR, message=message))
                return
            if result.artifact is None:
                failed = MeasureResult(
                    result.status, message=result.message, build_s=result.build_s
                )
                outcome.set_result(failed)
                return
            try:
                (ran,) = self.run([RunInput(result.artifact, item.problem, item.config)])
            except Exception as err:  # e.g. no runner for this target kind
                message = f"{type(err).__name__}: {err}"
                failed = MeasureResult(Status.RUN_ERROR, message=message, build_s=result.build_s)
                outcome.set_result(failed)
                return
            chain(ran, outcome, lambda r: dataclasses.replace(r, build_s=result.build_s))

        return done

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def chain(source: Future[T], target: Future[U], convert: Callable[[T], U]) -> None:
    """Resolve `target` with `convert(source.result())`, or with source's exception."""

    def done(f: Future[T]) -> None:
        try:
            target.set_result(convert(f.result()))
        except Exception as err:
            target.set_exception(err)

    source.add_done_callback(done)


class RoundRobin:
    """Thread-safe cycling over a fixed list (runners of one kind)."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)
        self._next = 0
        self._lock = threading.Lock()

    def pick(self) -> Any:
        with self._lock:
            item = self.items[self._next % len(self.items)]
            self._next += 1
            return item


_REGISTRY: dict[str, str] = {
    "local": "tunefleet.workers.local_executor:LocalExecutor",
    "ray": "tunefleet.workers.ray_executor:RayExecutor",
}


def create_executor(name: str, build_config: BuildConfig, **options: Any) -> Executor:
    """An executor by name ('local' or 'ray'); options go to its constructor."""
    import importlib

    try:
        module_name, _, attr = _REGISTRY[name].partition(":")
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ExecutorError(f"unknown executor {name!r}; choose one of {known}") from None
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(build_config, **options)
