"""tuner.untuned: where a compiled model has no record, the GEMM family's tasks at a bucket's
point run the first fixed tensor-core tiling of their space, which must compute what the
task does (checked in ir's GPU interpreter against the task's reference)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tunefleet.coordinator.graph import PINNED, Phase
from tunefleet.coordinator.job_plan import specialize
from tunefleet.coordinator.task_problems import task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir.gpu_interpreter import interpret
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import SpaceContext
from tunefleet.tuner.untuned import fixed_tensor_core_candidate
from tunefleet.workers.checking import compare_outputs, default_tolerance
from tunefleet.workers.inputs import resolve_op
from tunefleet.workers.targets import Target

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

DENSE = ("qkv_proj+rope", "o_proj+attn_residual", "gate_up_proj+act", "down_proj+mlp_residual")


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_prefill_dense_tasks_get_a_fixed_tiling_that_matches_the_reference(arch) -> None:
    cfg = replace(tiny("llama"), dtype="float16")
    ctx = SpaceContext(Target.cuda(arch))
    dims = {"n": 32, "m": 32}
    found = 0
    for task in model_tasks(cfg, Phase.PREFILL):
        func = specialize(task.func, {**PINNED[Phase.PREFILL], **dims})
        cand = fixed_tensor_core_candidate(func, ctx)
        if task.name not in DENSE:
            assert cand is None, task.name  # rows, attention, the embedding: no tiling
            continue
        if cand is None:  # no tile divides the tiny model's sizes (k = 96)
            continue
        assert not cand.trace.decisions and "tensorize" in cand.trace.as_python()
        problem = task_problem(task, {s: dims[s] for s in task.symbolic})
        op = resolve_op(problem.op)
        inputs = list(op.make_inputs(problem.dim_values, "float16", np.random.default_rng(0),
                                     **problem.attr_values))  # fmt: skip
        ref = op.reference(*inputs, **problem.attr_values)
        refs = list(ref) if isinstance(ref, list | tuple) else [ref]
        outs = interpret(replay(func, cand.trace).mod, inputs)
        out_dtypes = [b.dtype for b in func.params[func.num_inputs :]]
        err, bad = compare_outputs(outs, out_dtypes, refs, default_tolerance("float16"))
        assert bad == 0, f"{task.name}: error {err:.3g}"
        found += 1
    assert found >= 2


def test_gemvs_and_the_cpu_keep_their_defaults() -> None:
    cfg = replace(tiny("llama"), dtype="float16")
    task = next(t for t in model_tasks(cfg, Phase.DECODE) if t.name == "o_proj+attn_residual")
    func = specialize(task.func, {**PINNED[Phase.DECODE], "b": 1, "m": 64})
    assert fixed_tensor_core_candidate(func, SpaceContext(Target.cuda("sm_90"))) is None
    assert fixed_tensor_core_candidate(func, SpaceContext(Target.cpu(cores=2))) is None
