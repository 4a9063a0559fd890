"""Every task of every supported family, decode and prefill, as a compiled model runs it on a
GPU without tuning records (its default CUDA schedule), run in ir's GPU interpreter against
the task's own reference: fp16 and bf16, Hopper (attention over a cluster) and Ampere."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.task_problems import task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir.default_schedule_cuda import default_cuda_schedule
from tunefleet.ir.gpu_interpreter import interpret
from tunefleet.workers.checking import compare_outputs, default_tolerance
from tunefleet.workers.inputs import resolve_op

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import HF_CONFIGS, tiny

DIMS = {"b": 3, "m": 37, "n": 5}  # 3 sequences, 37 cached positions, 5 new tokens


@pytest.mark.parametrize(("dtype", "arch"), [("float16", "sm_90"), ("bfloat16", "sm_80")])
@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("family", sorted(HF_CONFIGS))
def test_every_task_default_matches_its_reference(family, phase, dtype, arch) -> None:
    cfg = replace(tiny(family), dtype=dtype)
    wrong = []
    for task in model_tasks(cfg, phase):
        dims = {s: DIMS[s] for s in task.symbolic}
        problem = task_problem(task, dims)
        op = resolve_op(problem.op)
        attrs = problem.attr_values
        inputs = list(op.make_inputs(dims, dtype, np.random.default_rng(0), **attrs))
        ref = op.reference(*inputs, **attrs)
        refs = list(ref) if isinstance(ref, list | tuple) else [ref]
        outs = interpret(default_cuda_schedule(task.func, arch=arch).mod, inputs, dims)
        out_dtypes = [b.dtype for b in task.func.params[task.func.num_inputs :]]
        err, bad = compare_outputs(outs, out_dtypes, refs, default_tolerance(dtype))
        if bad:
            wrong.append(f"{task.name}: {bad} wrong, error {err:.3g}")
    assert not wrong, wrong
