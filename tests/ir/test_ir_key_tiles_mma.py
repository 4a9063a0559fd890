"""Prefill attention in key tiles on tensor cores (`ir.key_tiles_mma`): the
form matches numpy in the GPU interpreter (which runs ldmatrix and mma.sync as the loops
they replace) for every group of query heads a block takes, at odd sizes; its tensorized
nests carry no guard; its shared memory is constant and leaves three blocks a
multiprocessor at Llama-3-8B's heads. tests/ir/test_ir_key_tiles.py compiles it with
nvcc (no spills) and, on a GPU, runs it against the task's reference."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.presets import resolve_model
from tunefleet.coordinator.task_problems import task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import build_source
from tunefleet.ir.annotation_keys import TENSORIZE
from tunefleet.ir.default_schedule_cuda import kv_group
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.gpu_interpreter import interpret
from tunefleet.ir.key_tiles_mma import key_tiles_mma_schedule
from tunefleet.ir.stmt import For, IfThenElse
from tunefleet.ir.target_passes import lower_for_target
from tunefleet.ir.visit import walk
from tunefleet.workers.checking import compare_outputs, default_tolerance
from tunefleet.workers.inputs import resolve_op

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

NVCC = shutil.which("nvcc")


def _attention(cfg):
    (task,) = [t for t in model_tasks(cfg, Phase.PREFILL) if t.name.startswith("attn_scores")]
    return task


def _llama_mma():
    return key_tiles_mma_schedule(_attention(resolve_model("llama-3-8b")).func, group=4)


def _check(task, dims: dict[str, int], sch) -> tuple[float, int]:
    problem = task_problem(task, dims)
    op, attrs = resolve_op(problem.op), problem.attr_values
    dtype = task.func.params[0].dtype
    inputs = list(op.make_inputs(dims, dtype, np.random.default_rng(3), **attrs))
    (out,) = interpret(sch.mod, inputs, dims)
    ref = op.reference(*inputs, **attrs)
    return compare_outputs([out], [dtype], [ref], default_tolerance(dtype))


@pytest.mark.parametrize(
    ("family", "dtype"),
    [("llama", "bfloat16"), ("gemma", "float16"), ("phi3", "bfloat16")],
    ids=["2_heads_a_block", "4_heads_a_block", "1_head_a_block"],
)
@pytest.mark.parametrize(
    ("n", "m"),
    [(1, 1), (5, 37), (17, 65), (11, 2 * 64 + 7), (9, 9)],
    ids=["one_key", "short", "a_token_and_a_key_past_the_tiles", "tiles_and_a_tail", "prompt_only"],
)
def test_tensor_core_key_tiles_match_numpy(family, dtype, n, m) -> None:
    task = _attention(replace(tiny(family), dtype=dtype))
    sch = key_tiles_mma_schedule(task.func, group=kv_group(task.func))
    err, bad = _check(task, {"n": n, "m": m}, sch)
    assert bad == 0, err


@pytest.mark.parametrize("form", [{"trim": False}, {"sums": False}, {"sums": False, "trim": False}],
                         ids=["every_key", "sums_on_simt", "sums_on_simt_every_key"])  # fmt: skip
def test_the_other_forms_match_numpy(form) -> None:
    task = _attention(replace(tiny("llama"), dtype="bfloat16"))
    sch = key_tiles_mma_schedule(task.func, group=2, **form)
    assert _check(task, {"n": 20, "m": 150}, sch)[1] == 0


def test_what_the_tensor_cores_cannot_take_is_refused() -> None:
    fp32 = _attention(tiny("llama")).func
    with pytest.raises(ScheduleError, match="fp16 or bf16 queries"):
        key_tiles_mma_schedule(fp32, group=2)
    bf16 = _attention(replace(tiny("llama"), dtype="bfloat16")).func
    with pytest.raises(ScheduleError, match="1, 2 or 4 query heads"):
        key_tiles_mma_schedule(bf16, group=3)


def test_the_tensorized_nests_carry_no_guard() -> None:
    """The tiles' rows past the prompt and keys past the cache are computed (on chip) and
    never read: the lowered kernel's tensorized nests hold no branch, and the source runs
    ldmatrix and mma.sync."""
    task = _attention(replace(tiny("llama"), dtype="bfloat16"))
    sch = key_tiles_mma_schedule(task.func, group=2)
    low = lower_for_target(sch.mod, "cuda")
    nests = [f for f in walk(low.body) if isinstance(f, For) and TENSORIZE in dict(f.annotations)]
    kinds = {str(dict(f.annotations)[TENSORIZE]) for f in nests}
    assert kinds == {"ldmatrix_a_x4", "ldmatrix_b_x4", "mma_fill_f32",
                     "mma_m16n8k16_bf16_f32", "mma_store_f32"}  # fmt: skip
    assert not [f for f in nests if any(isinstance(n, IfThenElse) for n in walk(f))]
    src = build_source(sch, "cuda").source
    # the scores of both passes and the weighted sums, two m16n8k16 halves each
    assert src.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == 6
    simt = build_source(key_tiles_mma_schedule(task.func, group=2, sums=False), "cuda").source
    assert simt.count("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32") == 4


def test_shared_memory_is_constant_and_leaves_three_blocks_a_multiprocessor() -> None:
    """The sums' fragments hold 72 floats a lane across the tiles; shared memory holds a
    tile's operands and the float32 score and sum tiles (sm_90: 228 KB a multiprocessor)."""
    ks = build_source(_llama_mma(), "cuda")
    assert isinstance(ks.shared_bytes, int) and 0 < ks.shared_bytes <= 74 * 1024
    assert ks.block == (32, 4, 1)
    assert ks.grid == ("(((n + 15) // 16) * 8)", 1, 1)  # 8 kv heads x ceil(n / 16) tiles
