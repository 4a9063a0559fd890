"""ir.gpu_interpreter: CUDA schedules run on the CPU, each thread a numpy lane. Defaults and
attention's keyed and cluster forms match numpy, tensor-core tilings too; a missing
cross-thread reduction, a missing guard and an unwritten shared buffer are caught."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import Schedule, Var, default_schedule, ops
from tunefleet.ir.default_schedule_cuda import default_cuda_schedule
from tunefleet.ir.dtypes import from_float32, to_float32
from tunefleet.ir.gpu_interpreter import InterpretError, interpret, interpret_lowered
from tunefleet.ir.lower import lower
from tunefleet.ir.stmt import BufferStore, IfThenElse, SeqStmt, ThreadAllReduce
from tunefleet.ir.tensorcore_schedule import WMMA_MMA, apply_wmma_tiling
from tunefleet.ir.visit import rewrite
from tunefleet.workers.checking import compare_outputs, default_tolerance

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

CASES = [
    ("softmax", {"m": 5, "n": 300}),
    ("rmsnorm", {"m": 7, "n": 1000}),
    ("layernorm", {"m": 3, "n": 100}),
    ("dense", {"m": 3, "n": 64, "k": 512}),  # a warp per output
    ("matmul", {"m": 33, "n": 20, "k": 70}),  # a thread per output
    ("add", {"m": 5, "n": 300}),
]


def _check(op: str, dims: dict, dtype: str, func=None, run_dims=None) -> tuple[float, int]:
    opdef = ops.get_op(op)
    inputs = opdef.make_inputs(dims, dtype, np.random.default_rng(0))
    sch = default_schedule(func or opdef.build(dims, dtype), target="cuda")
    (out,) = interpret(sch.mod, inputs, run_dims)
    return compare_outputs([out], [dtype], [opdef.reference(*inputs)], default_tolerance(dtype))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(("op", "dims"), CASES)
def test_default_cuda_schedules_match_numpy(op, dims, dtype) -> None:
    err, bad = _check(op, dims, dtype)
    assert bad == 0, err


def test_symbolic_dims_come_from_the_call() -> None:
    m = Var("m")
    func = ops.get_op("rmsnorm").build({"m": m, "n": 1000}, "float16")
    assert _check("rmsnorm", {"m": 6, "n": 1000}, "float16", func, {"m": 6})[1] == 0
    with pytest.raises(InterpretError, match="symbolic dim m"):
        _check("rmsnorm", {"m": 6, "n": 1000}, "float16", func)


def _attention_problem(dtype: str, phase: Phase, m: int = 37):
    cfg = replace(tiny("llama"), dtype=dtype)
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    (task,) = [t for t in model_tasks(cfg, phase) if t.name.startswith("attn_scores")]
    dims = {"b": 3, "m": m} if phase is Phase.DECODE else {"n": 5, "m": m}
    b, n, m = dims.get("b", 1), dims.get("n", 1), dims["m"]
    rng = np.random.default_rng(1)
    raw = [rng.standard_normal(s).astype(np.float32) for s in ((b, h, n, d), (b, kv, m, d))]
    raw.append(rng.standard_normal((b, kv, m, d)).astype(np.float32))
    inputs = [from_float32(a, dtype) for a in raw]
    q, k, v = (to_float32(a, dtype).astype(np.float64) for a in inputs)
    k, v = (np.repeat(a, h // kv, axis=1) for a in (k, v))
    s = q @ k.transpose(0, 1, 3, 2)
    if phase is Phase.PREFILL:  # query i sits at position m - n + i
        s = np.where(np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    if phase is Phase.DECODE:  # a decode step reads the cache position-major, [m, b, kv, d]
        inputs[1:] = [np.ascontiguousarray(a.transpose(2, 0, 1, 3)) for a in inputs[1:]]
    return task, inputs, dims, (p / p.sum(-1, keepdims=True)) @ v


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("phase", [Phase.DECODE])  # a prompt's forms: test_ir_key_tiles.py
@pytest.mark.parametrize(
    "form",
    [
        {"arch": "sm_90"},  # decode: a query head's row split over a cluster of 8 blocks
        {"arch": "sm_90", "group": 2},  # decode: a kv head's 2 query heads per cluster
        {"arch": "sm_80"},  # keyed rows: warps over the keys, lanes over the head dim
        {"arch": "sm_80", "group": 2},  # keyed rows of a kv head's 2 query heads per block
        {"arch": "sm_80", "keyed_warps": 0},  # a thread per key
    ],
    ids=["cluster", "cluster_grouped", "keyed", "keyed_grouped", "thread_per_key"],
)
def test_attention_default_forms_match_numpy(form, phase, dtype) -> None:
    task, inputs, dims, ref = _attention_problem(dtype, phase)
    (out,) = interpret(default_cuda_schedule(task.func, **form).mod, inputs, dims)
    err, bad = compare_outputs([out], [dtype], [ref], default_tolerance(dtype))
    assert bad == 0, err


@pytest.mark.parametrize("m", [1, 9, 600])
@pytest.mark.parametrize(
    "form",
    [{"arch": "sm_90"}, {"arch": "sm_90", "group": 2}, {"arch": "sm_80"}],
    ids=["cluster", "cluster_grouped", "keyed"],
)
def test_decode_attention_at_kv_lengths_around_its_splits(form, m) -> None:
    """A kv cache of one position, of fewer positions than a cluster has blocks, and of more
    than one pass of a block's rows of lanes (600 over 8 blocks of 32 rows: 3 steps each)."""
    task, inputs, dims, ref = _attention_problem("bfloat16", Phase.DECODE, m)
    (out,) = interpret(default_cuda_schedule(task.func, **form).mod, inputs, dims)
    err, bad = compare_outputs([out], ["bfloat16"], [ref], default_tolerance("bfloat16"))
    assert bad == 0, err


def _softmax_lowered():
    opdef = ops.get_op("softmax")
    dims = {"m": 5, "n": 300}
    low = lower(default_schedule(opdef.build(dims, "float32"), target="cuda").mod)
    inputs = opdef.make_inputs(dims, "float32", np.random.default_rng(0))
    return low, inputs, opdef.reference(*inputs)


def test_a_missing_cross_thread_reduction_changes_the_result() -> None:
    low, inputs, ref = _softmax_lowered()
    (out,) = interpret_lowered(low, inputs)
    assert compare_outputs([out], ["float32"], [ref], 1e-5)[1] == 0
    alone = rewrite(low.body, lambda n: SeqStmt(()) if isinstance(n, ThreadAllReduce) else None)
    (out,) = interpret_lowered(dataclasses.replace(low, body=alone), inputs)
    assert compare_outputs([out], ["float32"], [ref], 1e-5)[1] > 0


def test_a_missing_guard_is_an_out_of_bounds_read() -> None:
    low, inputs, _ = _softmax_lowered()  # 300 columns over 2 passes of 256 threads

    def unguard(n):
        if isinstance(n, IfThenElse) and n.else_case is None and "300" in repr(n.cond):
            return n.then_case
        return None

    with pytest.raises(InterpretError, match=r"read of x at flat index \d+, outside its 1500"):
        interpret_lowered(dataclasses.replace(low, body=rewrite(low.body, unguard)), inputs)


def test_a_shared_buffer_no_thread_wrote_reads_as_nan() -> None:
    low, inputs, _ = _softmax_lowered()

    def drop(n):
        if isinstance(n, BufferStore) and n.buffer.name == "softmax_max":
            return SeqStmt(())
        return None

    (out,) = interpret_lowered(dataclasses.replace(low, body=rewrite(low.body, drop)), inputs)
    assert np.isnan(out).all()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensor_core_steps_run_as_the_loops_they_replace(dtype) -> None:
    """A WMMA tiling: fragments per warp, the MMA's rows and columns as numpy axes."""
    dims = {"m": 64, "n": 64, "k": 64}
    opdef = ops.get_op("dense")
    sch = Schedule(opdef.build(dims, dtype))
    apply_wmma_tiling(
        sch, "dense", "dense_acc", WMMA_MMA[dtype], warps=(2, 2), tile=(64, 64), tile_k=32,
        pad=8, stages=2,
    )  # fmt: skip
    inputs = opdef.make_inputs(dims, dtype, np.random.default_rng(0))
    (out,) = interpret(sch.mod, inputs)
    err, bad = compare_outputs([out], [dtype], [opdef.reference(*inputs)], default_tolerance(dtype))
    assert bad == 0, err
