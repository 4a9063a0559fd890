"""Gradient-based task scheduling (Ansor, MetaSchedule's GradientBasedTaskScheduler).

After one warm-up round per task, the next round goes to the task whose weighted end-to-end
time is expected to fall most per round:

    score_i = w_i * (alpha * backward_i + (1 - alpha) * forward_i)
    backward_i = (best_i[r - window] - best_i[r]) / window     (recent improvement per round)
    forward_i  = best_i[r] / r                                 (optimistic: the time a round
                                                                 has been worth on average)

with w_i the task's weight (how often it runs in the model), so a task's share of the model's
time (w_i * best_i) drives the forward term. alpha = 0.2 and window = 3 as published. A task
not yet tried has priority; one whose rounds found no valid schedule waits for the others.
Ties go to the lower index; finished tasks are never chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .task_scheduler import TaskScheduler


class GradientScheduler(TaskScheduler):
    """Rounds to the task with the largest expected weighted latency reduction."""

    name = "gradient"

    def __init__(
        self,
        tasks: Sequence[Any],
        max_trials: int,
        trials_per_round: int = 16,
        alpha: float = 0.2,
        window: int = 3,
    ) -> None:
        super().__init__(tasks, max_trials, trials_per_round)
        self.alpha = alpha
        self.window = window

    def score(self, task: int) -> float:
        """Expected reduction of w * best per round for `task` (inf: not warmed up / no result)."""
        p = self.progress(task)
        if p.rounds == 0:
            return math.inf
        if math.isinf(p.best_ms):
            return 0.0  # rounds found nothing valid: others first
        hist = p.best_history
        backward = 0.0
        if len(hist) > self.window and not math.isinf(hist[-1 - self.window]):
            backward = (hist[-1 - self.window] - hist[-1]) / self.window
        forward = hist[-1] / p.rounds
        return self.tasks[task].weight * (self.alpha * backward + (1 - self.alpha) * forward)

    def _choose(self) -> int:
        scores = [
            -math.inf if self.is_finished(i) else self.score(i) for i in range(len(self.tasks))
        ]
        best = max(scores)
        return scores.index(best)
