"""Auto-unroll: which loops an `auto_unroll_max_step` annotation unrolls, and that the
program still computes the same, replays its sampled limit, and survives JSON."""

from __future__ import annotations

import shutil

import pytest
from ir_gcc_harness import check_against_reference

from tunefleet.ir import Schedule, Trace, ops
from tunefleet.ir.auto_unroll import AUTO_UNROLL, steps
from tunefleet.ir.codegen import build_source
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.lower import lower
from tunefleet.ir.stmt import For
from tunefleet.ir.visit import walk

DIMS = {"m": 8, "n": 32, "k": 64}


def _tiled_dense(limit: int | None) -> Schedule:
    """dense 8x32x64: i, j0 (8), k, j1 (4, vectorized) with k split by 4; `limit` on i."""
    func = ops.get_op("dense").build(DIMS, "float32")
    sch = Schedule(func)
    b = sch.get_block("dense")
    i, j, k = sch.get_loops(b)
    j0, j1 = sch.split(j, [None, 4])
    k0, k1 = sch.split(k, [None, 4])
    sch.reorder(i, j0, k0, k1, j1)
    sch.decompose_reduction(b, k0)
    sch.vectorize(j1)
    if limit is not None:
        sch.annotate(i, AUTO_UNROLL, limit)
    return sch


def _kinds(sch: Schedule) -> dict[str, str]:
    return {n.var.name: n.kind for n in walk(lower(sch.func).body) if isinstance(n, For)}


def test_steps_count_statements_with_vector_loops_once() -> None:
    body = lower(_tiled_dense(None).func).body
    loops = {n.var.name: n for n in walk(body) if isinstance(n, For)}
    k1 = next(lp for name, lp in loops.items() if name.startswith("k") and lp.extent.value == 4)
    assert steps(k1) == 4  # 4 x (a vectorized j1 counted once)
    i = next(lp for name, lp in loops.items() if name.startswith("i"))
    assert steps(i) == 8 * 8 * (4 + 16 * 4)  # per j0: the (serial) init loop, then k0 x k1


@pytest.mark.parametrize(
    ("limit", "unrolled"),
    [
        (0, set()),
        (4, {"j_1_init", "k_1"}),
        (64, {"j_1_init", "k_1", "k_0"}),
        (100_000, {"j_1_init", "k_1", "k_0", "j_0", "i"}),
    ],
)
def test_only_loops_within_the_limit_are_unrolled(limit: int, unrolled: set[str]) -> None:
    kinds = _kinds(_tiled_dense(limit))
    got = {name for name, kind in kinds.items() if kind == "unrolled"}
    assert got == unrolled, kinds
    assert kinds["j_1"] == "vectorized"  # other kinds stay as they are


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
@pytest.mark.parametrize("limit", [0, 16, 512])
def test_unrolled_program_matches_numpy(limit: int) -> None:
    sch = _tiled_dense(limit)
    src = build_source(sch).source
    assert ("#pragma GCC unroll" in src) == (limit > 0)
    check_against_reference(sch, ops.get_op("dense"), DIMS)


def test_sampled_limit_replays_and_round_trips() -> None:
    func = ops.get_op("dense").build(DIMS, "float32")
    sch = Schedule(func)
    i = sch.get_loops(sch.get_block("dense"))[0]
    step = sch.sample_categorical([0, 16, 512], [1 / 3] * 3, decision=0)
    sch.annotate(i, AUTO_UNROLL, step)
    trace = sch.trace
    idx = next(n for n, inst in enumerate(trace.insts) if inst.kind == "sample_categorical")
    other = trace.apply(func, {idx: 2})
    (ann,) = [n.annotations for n in walk(other.func.body) if isinstance(n, For)][:1]
    assert dict(ann)[AUTO_UNROLL] == 512
    again = Trace.from_json(other.trace.to_json()).apply(func)
    assert build_source(again).source == build_source(other).source


def test_annotation_value_must_be_plain() -> None:
    sch = Schedule(ops.get_op("dense").build(DIMS, "float32"))
    i = sch.get_loops(sch.get_block("dense"))[0]
    with pytest.raises(ScheduleError, match="annotation values"):
        sch.annotate(i, AUTO_UNROLL, [16])
