"""Task schedulers: which task of a model gets the next round of trials.

`next_task()` names a task (or None when the budget is spent or every task is finished; tasks
with a round in flight are passed as `busy` and named only when nothing else is left) and
`on_results(task, trials, best_ms)` reports a finished round; `finish(task)` takes a task out
(it converged, or its space has nothing left to measure). Chosen by name
(`create_task_scheduler("gradient", ...)`) or passed as instances; both are deterministic, so
they are tested on recorded or simulated measurements without a device. Tasks are anything
with `workload_key` and `weight` (the coordinator's `Task`), or `TaskSpec`s.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from .registry import load_entry


class SchedulerError(ValueError):
    """Unknown scheduler, no tasks, or a report about a task that does not exist."""


@dataclass(frozen=True)
class TaskSpec:
    """A task as the scheduler sees it: its identity and how often it runs in the model."""

    workload_key: str
    weight: float = 1.0


@dataclass(frozen=True)
class TaskProgress:
    """What a scheduler knows about one task after some rounds."""

    rounds: int
    trials: int
    best_history: tuple[float, ...]  # best time after each round (inf while none is ok)

    @property
    def best_ms(self) -> float:
        return self.best_history[-1] if self.best_history else float("inf")


class TaskScheduler(ABC):
    """Allocates rounds of `trials_per_round` trials across tasks within `max_trials`."""

    name = "abstract"

    def __init__(self, tasks: Sequence[Any], max_trials: int, trials_per_round: int = 16) -> None:
        if not tasks:
            raise SchedulerError("a task scheduler needs at least one task")
        self.tasks = [
            TaskSpec(str(t.workload_key), float(getattr(t, "weight", 1.0))) for t in tasks
        ]
        self.max_trials = max_trials
        self.trials_per_round = trials_per_round
        self._progress = [TaskProgress(0, 0, ()) for _ in self.tasks]
        self._spent = 0
        self._finished: set[int] = set()

    @property
    def spent(self) -> int:
        return self._spent

    def progress(self, task: int) -> TaskProgress:
        return self._progress[task]

    def next_task(self, busy: Collection[int] = ()) -> int | None:
        """The task to tune next, or None when the trial budget is spent or all are finished.

        `busy` tasks have a round in flight whose results are not known yet (a pipelined
        loop): another unfinished task is preferred, a busy one is named only when no other
        is left.
        """
        if self._spent >= self.max_trials or len(self._finished) == len(self.tasks):
            return None
        finished = self._finished
        if not finished | set(busy) >= set(range(len(self.tasks))):
            self._finished = finished | set(busy)
            try:
                return self._choose()
            finally:
                self._finished = finished
        return self._choose()

    def finish(self, task: int) -> None:
        """Give `task` no more rounds (it converged or has nothing left to measure)."""
        if not 0 <= task < len(self.tasks):
            raise SchedulerError(f"no task #{task} (there are {len(self.tasks)})")
        self._finished.add(task)

    def reopen(self, task: int) -> None:
        """Give `task` rounds again after `finish` set it aside (another job held its lease)."""
        self._finished.discard(task)

    def is_finished(self, task: int) -> bool:
        return task in self._finished

    @abstractmethod
    def _choose(self) -> int:
        """Pick an unfinished task index (the budget is not yet spent)."""

    def on_results(self, task: int, trials: int, best_ms: float | None) -> None:
        """A round of `task` finished: `trials` measured, best time of the task now `best_ms`."""
        if not 0 <= task < len(self.tasks):
            raise SchedulerError(f"no task #{task} (there are {len(self.tasks)})")
        p = self._progress[task]
        best = min(p.best_ms, best_ms if best_ms is not None else float("inf"))
        self._progress[task] = TaskProgress(
            p.rounds + 1, p.trials + trials, (*p.best_history, best)
        )
        self._spent += trials

    def weighted_latency(self) -> float:
        """sum(weight * best) over tasks: the end-to-end time the schedule aims to minimise."""
        return sum(t.weight * p.best_ms for t, p in zip(self.tasks, self._progress, strict=True))


_REGISTRY: dict[str, str] = {
    "round_robin": "tunefleet.tuner.scheduler_round_robin:RoundRobinScheduler",
    "gradient": "tunefleet.tuner.scheduler_gradient:GradientScheduler",
}


def create_task_scheduler(
    name: str, tasks: Sequence[Any], max_trials: int, **options: Any
) -> TaskScheduler:
    """A task scheduler by name ("gradient" or "round_robin")."""
    cls = load_entry(_REGISTRY, name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise SchedulerError(f"unknown task scheduler {name!r}; choose one of {known}")
    return cls(tasks, max_trials, **options)
