"""Round-robin task scheduling: every task gets a round in turn."""

from __future__ import annotations

import math

from .task_scheduler import TaskScheduler


class RoundRobinScheduler(TaskScheduler):
    """Task 0, 1, ..., n-1, 0, ... regardless of results, skipping finished tasks."""

    name = "round_robin"

    def _choose(self) -> int:
        rounds = [
            math.inf if self.is_finished(i) else self.progress(i).rounds
            for i in range(len(self.tasks))
        ]
        return rounds.index(min(rounds))
