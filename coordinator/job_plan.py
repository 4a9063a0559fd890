"""What a model-tuning job tunes: one workload per (task, bucket point), with its problem.

A task's PrimFunc is symbolic in the phase's dims (`b`, `n`, `m`); a job tunes it at each
point of its buckets, so `specialize` substitutes the point's values into the PrimFunc (its
buffers included) and folds the constants. The specialised PrimFunc's structural hash is the
workload key of that (task, bucket): records of different buckets never mix, and the same
kernel at the same point is one workload whichever model or job asks for it.

A workload's correctness reference comes from a `ProblemBuilder` (`task, dims -> Problem`);
one that raises `NoReference` leaves the workload untuned, with the reason recorded in the job.
`chain_problem` composes every task's reference from its unfused op chain.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tunefleet.coordinator.graph import PINNED, Phase
from tunefleet.coordinator.task_problems import TaskProblemError, task_dims, task_problem
from tunefleet.coordinator.tasks import Task
from tunefleet.ir import BinOp, Const, PrimFunc, Var, const, simplify, structural_hash
from tunefleet.ir.visit import rewrite
from tunefleet.workers import Problem


class NoReference(LookupError):
    """A task has no correctness reference yet, so it cannot be measured."""


ProblemBuilder = Callable[[Task, Mapping[str, int]], Problem]


@dataclass(frozen=True)
class PlannedWorkload:
    """One (task, bucket point) of a job: the specialised PrimFunc and how to check it.

    `problem` is None when the builder has no reference for the task; `note` says why.
    """

    task: Task
    phase: Phase
    bucket: Mapping[str, int]  # the point's symbolic dims
    dims: Mapping[str, int]  # the point plus the dims the phase pins
    func: PrimFunc
    workload_key: str
    problem: Problem | None
    note: str = ""

    @property
    def name(self) -> str:
        """`phase/task` as progress lines and `--json` name it."""
        return f"{self.phase.value}/{self.task.name}"

    @property
    def weight(self) -> float:
        return float(self.task.weight)

    @property
    def shape(self) -> dict[str, int]:
        """The task's shape parameters at this point (for the workloads table)."""
        return {k: v.evaluate(self.dims) for k, v in self.task.shape}


def bucket_points(task: Task) -> list[dict[str, int]]:
    """Every combination of the task's bucket values, in bucket order (one empty point for a
    task with no symbolic dim)."""
    names = [name for name, _ in task.buckets]
    values = [vals for _, vals in task.buckets]
    return [dict(zip(names, point, strict=True)) for point in itertools.product(*values)]


def specialize(func: PrimFunc, dims: Mapping[str, int]) -> PrimFunc:
    """`func` with each symbolic dim named in `dims` replaced by its value, constants folded.

    Before: `rmsnorm(x: float32[b, 64], ...)`, loops `for i in range(b)`; after (b=4):
    `rmsnorm(x: float32[4, 64], ...)`, `for i in range(4)`.
    """
    values = {v: const(dims[v.name], v.dtype) for v in func.shape_vars if v.name in dims}

    def post(node: Any) -> Any:
        if isinstance(node, Var):
            return values.get(node)
        if isinstance(node, BinOp) and isinstance(node.a, Const) and isinstance(node.b, Const):
            return simplify(node)
        return None

    return rewrite(func, post, into_buffers=True) if values else func


def plan_workloads(
    tasks: Sequence[tuple[Phase, Task]], problem_for: ProblemBuilder
) -> list[PlannedWorkload]:
    """One planned workload per (task, bucket point), in task then bucket order; the same
    specialised workload reached twice (a task shared by two phases) is planned once."""
    out: list[PlannedWorkload] = []
    seen: set[str] = set()
    for phase, task in tasks:
        if task.func is None:
            continue
        for point in bucket_points(task):
            dims = {**PINNED[phase], **point}
            dims.update(task_dims(task, dims))  # a prefill kv length is at least the prompt
            func = specialize(task.func, dims)
            key = structural_hash(func)
            if key in seen:
                continue
            seen.add(key)
            try:
                problem, note = problem_for(task, dims), ""
            except NoReference as err:
                problem, note = None, f"no reference yet: {err}"
            out.append(PlannedWorkload(task, phase, point, dims, func, key, problem, note))
    return out


def chain_problem(task: Task, dims: Mapping[str, int]) -> Problem:
    """The task's problem composed from its op chain (`task_problems.task_problem`); a task
    without a chain raises `NoReference`."""
    try:
        return task_problem(task, dims)
    except TaskProblemError as err:
        raise NoReference(str(err)) from None
