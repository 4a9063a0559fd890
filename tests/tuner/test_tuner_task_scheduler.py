"""Task schedulers on simulated tuning curves: warm-up, allocation, budget, determinism."""

from __future__ import annotations

import math

import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.presets import resolve_model
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.tuner.task_scheduler import (
    SchedulerError,
    TaskSpec,
    create_task_scheduler,
)

ROUND = 16


def curve(start: float, floor: float, tau: float):
    """Best time after t trials of a task whose search converges like start -> floor."""
    return lambda t: floor + (start - floor) * math.exp(-t / tau)


def simulate(name: str, tasks, curves, budget: int):
    sched = create_task_scheduler(name, tasks, budget, trials_per_round=ROUND)
    order = []
    while (task := sched.next_task()) is not None:
        order.append(task)
        p = sched.progress(task)
        sched.on_results(task, ROUND, curves[task](p.trials + ROUND))
    return sched, order


TASKS = [TaskSpec("big", weight=32.0), TaskSpec("small", weight=1.0), TaskSpec("done", weight=8.0)]
CURVES = [curve(4.0, 0.5, 200.0), curve(1.0, 0.2, 50.0), curve(0.2, 0.19, 10.0)]


def test_round_robin_is_even() -> None:
    _, order = simulate("round_robin", TASKS, CURVES, 9 * ROUND)
    assert order == [0, 1, 2] * 3


def test_gradient_warms_up_then_favours_the_task_worth_most() -> None:
    sched, order = simulate("gradient", TASKS, CURVES, 30 * ROUND)
    assert sorted(order[:3]) == [0, 1, 2], "every task gets one round first"
    counts = [order.count(i) for i in range(3)]
    assert counts[0] > counts[1] and counts[0] > counts[2]
    assert sum(counts) == 30 and sched.spent == 30 * ROUND


def test_gradient_beats_round_robin_on_weighted_latency() -> None:
    rr, _ = simulate("round_robin", TASKS, CURVES, 30 * ROUND)
    grad, _ = simulate("gradient", TASKS, CURVES, 30 * ROUND)
    assert grad.weighted_latency() < 0.9 * rr.weighted_latency()


def test_gradient_is_deterministic_and_skips_tasks_without_results() -> None:
    curves = [*CURVES[:2], lambda t: None]
    _, a = simulate("gradient", TASKS, curves, 12 * ROUND)
    _, b = simulate("gradient", TASKS, curves, 12 * ROUND)
    assert a == b
    assert a.count(2) == 1, "a task that found nothing valid waits for the others"


def test_accepts_coordinator_tasks() -> None:
    tasks = model_tasks(resolve_model("llama-3-8b"), Phase.DECODE)
    sched = create_task_scheduler("gradient", tasks, 4 * ROUND)
    assert sched.next_task() == 0
    assert len(sched.tasks) == len(tasks)


def test_errors() -> None:
    with pytest.raises(SchedulerError, match="unknown task scheduler"):
        create_task_scheduler("fifo", TASKS, 10)
    with pytest.raises(SchedulerError, match="at least one task"):
        create_task_scheduler("gradient", [], 10)
    sched = create_task_scheduler("gradient", TASKS, 10)
    with pytest.raises(SchedulerError, match="no task #7"):
        sched.on_results(7, 1, 1.0)


@pytest.mark.parametrize("name", ["gradient", "round_robin"])
def test_a_task_with_a_round_in_flight_is_named_only_when_nothing_else_is_left(name: str) -> None:
    sched = create_task_scheduler(name, TASKS, 10 * ROUND, trials_per_round=ROUND)
    first = sched.next_task()
    assert first == 0
    second = sched.next_task(busy={first})
    assert second not in (None, first)  # an untried task waits no longer than a busy one
    sched.finish(1)
    sched.finish(2)
    assert sched.next_task(busy={first}) == first  # the only one left, busy or not
    assert not sched.is_finished(first) and sched.is_finished(1) and sched.is_finished(2)
