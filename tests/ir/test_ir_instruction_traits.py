"""Primitive trace traits: every Schedule primitive declares them, every declaration names a
primitive, and traces of every primitive replay (JSON and Python) to identical code."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from tunefleet.ir import (
    build_source,
    compute,
    create_prim_func,
    exp,
    ops,
    placeholder,
    reduce_axis,
    reduce_max,
    reduce_sum,
    select,
)
from tunefleet.ir.annotation_keys import AUTO_UNROLL
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.instruction_traits import declared, sampling_kinds, traits_of
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import Trace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from dense_tensorcore_cuda import dense_mma_schedule, dense_tc_schedule
from dense_wgmma_cuda import dense_wgmma_schedule

NOT_PRIMITIVES = {"copy", "get", "show", "func", "mod", "original", "trace"}


def _schedule_methods() -> set[str]:
    return {n for n, _ in inspect.getmembers(Schedule) if not n.startswith("_")} - NOT_PRIMITIVES


def test_every_primitive_declares_traits_and_every_declaration_names_a_primitive() -> None:
    assert _schedule_methods() == set(declared())
    for name, traits in declared().items():
        assert traits.name == name and callable(getattr(Schedule, name))
        assert traits.results in ("none", "one", "list")
    assert sampling_kinds() == (
        "sample_categorical",
        "sample_compute_location",
        "sample_perfect_tile",
    )
    lists = {n for n, t in declared().items() if t.results == "list"}
    assert lists == {
        "get_loops",
        "get_producers",
        "get_consumers",
        "split",
        "pad_spatial",
        "sample_perfect_tile",
    }
    with pytest.raises(ScheduleError, match="unknown primitive 'get_child_blocks'"):
        traits_of("get_child_blocks")


def _elementwise_chain() -> Schedule:
    a = placeholder((8, 24), "float32", "a")
    b = compute((8, 24), lambda i, j: a[i, j] + 1.0, "b")
    c = compute((8, 24), lambda i, j: b[i, j] * 2.0, "c")
    d = compute((8, 24), lambda i, j: c[i, j] - 3.0, "d")
    sch = Schedule(create_prim_func([a, d]))
    bb = sch.get_block("b")
    (cb,) = sch.get_consumers(bb)
    (bb2,) = sch.get_producers(cb)
    sch.compute_inline(bb2)
    sch.reverse_compute_inline(sch.get_block("d"))
    i, j = sch.get_loops(cb)
    f = sch.fuse(i, j)
    f0, f1 = sch.split(f, [None, 8])
    sch.unroll(f1)
    sch.annotate(f0, AUTO_UNROLL, sch.sample_categorical([0, 16, 64], [0.2, 0.3, 0.5]))
    return sch


def _softmax(seed: int) -> Schedule:
    sch = Schedule(ops.get_op("softmax").build({"m": 7, "n": 129}), seed=seed)
    mx = sch.get_block("softmax_max")
    _i, k = sch.get_loops(mx)
    k0, _k1 = sch.split(k, [None, 16])
    sch.rfactor(k0, 1)
    sm = sch.get_block("softmax_sum")
    sch.compute_at(sm, sch.sample_compute_location(sm))
    return sch


def _matmul(seed: int) -> Schedule:
    sch = Schedule(ops.get_op("matmul").build({"m": 16, "n": 48, "k": 24}), seed=seed)
    blk = sch.get_block("matmul")
    wb = sch.cache_write(blk, 0, "local")
    i, j, k = sch.get_loops(blk)
    i0, i1 = sch.split(i, sch.sample_perfect_tile(i, n=2, max_innermost_factor=8))
    j0, j1 = sch.split(j, sch.sample_perfect_tile(j, n=2, max_innermost_factor=16))
    sch.reorder(i0, j0, i1, k, j1)
    sch.reverse_compute_at(wb, j0)
    sch.parallel(i0)
    sch.vectorize(j1)
    sch.decompose_reduction(blk, i1)
    return sch


def _packed_dense() -> Schedule:
    sch = Schedule(ops.get_op("dense").build({"m": 4, "n": 32, "k": 24}, "float32"))
    b = sch.get_block("dense")
    wp = sch.cache_read(b, 1, "global")
    sch.transform_layout(wp, 0, 0, 16, [0, 2, 1])
    i, j, k = sch.get_loops(b)
    jo, ji = sch.split(j, [None, 16])
    sch.reorder(jo, i, k, ji)
    return sch


def _padded_dense() -> Schedule:
    """dense at 5 x 30, padded to 8 x 32 and tiled by 8 x 16."""
    sch = Schedule(ops.get_op("dense").build({"m": 5, "n": 30, "k": 24}, "float32"))
    b = sch.get_block("dense")
    x_copy, w_copy, write_back = sch.pad_spatial(b, [3, 2, 0])
    sch.compute_inline(x_copy)
    sch.transform_layout(w_copy, 0, 0, 16, [0, 2, 1])
    sch.set_scope(b, 0, "local")
    i, j, k = sch.get_loops(b)
    jo, ji = sch.split(j, [None, 16])
    sch.reorder(jo, i, k, ji)
    sch.reverse_compute_at(write_back, jo)
    return sch


def _causal_max() -> Schedule:
    """A causal row max over 37 keys in tiles of 8, each row stopping at its diagonal."""
    x = placeholder((37, 37), "float32", "x")
    r = reduce_axis(37, "j")
    y = compute((37,), lambda i: reduce_max(select(r <= i, x[i, r], float("-inf")), r), "y")
    sch = Schedule(create_prim_func([x, y]))
    _, j = sch.get_loops(sch.get_block("y"))
    jo, _ = sch.split(j, [None, 8])
    sch.trim_masked(jo)
    return sch


def _causal_weights() -> Schedule:
    """ctx = sum over j <= i of exp(x[i, j]) * v[j, c] in tiles of 8 keys, trimmed at the
    diagonal, the mask then moved into the weights' block."""
    x = placeholder((37, 37), "float32", "x")
    v = placeholder((37, 4), "float32", "v")
    p = compute((37, 37), lambda i, j: exp(x[i, j]), "p")
    r = reduce_axis(37, "j")
    ctx = compute((37, 4), lambda i, c: reduce_sum(select(r <= i, p[i, r], 0.0) * v[r, c], r),
                  "ctx")  # fmt: skip
    sch = Schedule(create_prim_func([x, v, ctx]))
    _, _, j = sch.get_loops(sch.get_block("ctx"))
    jo, _ = sch.split(j, [None, 8])
    sch.trim_masked(jo)
    sch.mask_into_producer(sch.get_block("ctx"))
    return sch


CASES = {
    "causal_weights": (_causal_weights, "cpu"),
    "causal_max": (_causal_max, "cpu"),
    "elementwise": (_elementwise_chain, "cpu"),
    "softmax": (lambda: _softmax(3), "cpu"),
    "matmul": (lambda: _matmul(1), "cpu"),
    "packed_dense": (_packed_dense, "cpu"),
    "padded_dense": (_padded_dense, "cpu"),
    "wmma": (lambda: dense_tc_schedule(256, 256, 128, tile=(64, 64), warps=(2, 2)), "cuda"),
    "mma_sync": (lambda: dense_mma_schedule(512, 256, 128), "cuda"),
    "wgmma": (lambda: dense_wgmma_schedule(256, 512, 320, "float16", 2, 256, 3), "cuda"),
}


def test_the_cases_record_every_primitive() -> None:
    kinds = {inst.kind for make, _ in CASES.values() for inst in make().trace.insts}
    assert kinds == set(declared())


@pytest.mark.parametrize("case", sorted(CASES))
def test_replay_of_json_and_python_traces_gives_identical_code(case: str) -> None:
    make, target = CASES[case]
    sch = make()
    source = build_source(sch, target=target).source
    replay = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert replay.func == sch.func and replay.trace == sch.trace
    assert build_source(replay, target=target).source == source
    env: dict = {}
    exec(sch.trace.as_python(), env)
    fresh = Schedule(sch.original)
    env["apply_schedule"](fresh)
    assert fresh.func == sch.func and fresh.trace == sch.trace


def test_only_sampling_instructions_take_decisions() -> None:
    sch = _matmul(0)
    t = sch.trace
    for idx, inst in enumerate(t.insts):
        if traits_of(inst.kind).sampling:
            assert idx in t.decisions
            t.with_decision(idx, t.decisions[idx])
        else:
            assert idx not in t.decisions
            with pytest.raises(ScheduleError, match="not a sampling instruction"):
                t.with_decision(idx, 0)
