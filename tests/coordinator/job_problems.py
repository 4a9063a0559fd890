"""Problem builders the job tests share (imported by name, as pytest puts this folder on the
path)."""

from __future__ import annotations

from tunefleet.coordinator.job_plan import NoReference, chain_problem


def only(*op_names: str):
    """A problem builder for the tasks whose op is one of `op_names`; others get none."""

    def build(task, dims):
        if task.op not in op_names:
            raise NoReference(f"{task.op} is left out of this test")
        return chain_problem(task, dims)

    return build
