"""The race rule: every primitive that would let iterations of a parallel, vectorized or
thread-bound loop race is refused with the loop and the block named, and nothing changes."""

from __future__ import annotations

import dataclasses

import pytest

from tunefleet.ir import ops
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import Var, const
from tunefleet.ir.prim_loops import check_races
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import children, map_stmt, root_body, with_root
from tunefleet.ir.stmt import For


def _refused(sch: Schedule, fn) -> str:  # type: ignore[no-untyped-def]
    before = (sch.func, sch.trace)
    with pytest.raises(ScheduleError) as info:
        fn()
    assert (sch.func, sch.trace) == before
    return str(info.value)


def _matmul() -> tuple[Schedule, object]:
    sch = Schedule(ops.get_op("matmul").build({"m": 8, "n": 16, "k": 32}))
    return sch, sch.get_block("matmul")


def test_a_parallel_reduction_loop_races() -> None:
    sch, b = _matmul()
    _, _, k = sch.get_loops(b)
    msg = _refused(sch, lambda: sch.parallel(k))
    assert msg == (
        "parallel loop k would iterate the reduction of block 'matmul', so iterations "
        "would race on the same output"
    )


def test_a_vectorized_reduction_needs_its_init_split_off_first() -> None:
    sch, b = _matmul()
    _, _, k = sch.get_loops(b)
    msg = _refused(sch, lambda: sch.vectorize(k))
    assert "vectorized loop k would iterate the reduction" in msg
    assert "decompose_reduction first" in msg
    sch.decompose_reduction(b, k)
    sch.vectorize(k)  # an OpenMP simd reduction now


def test_a_thread_axis_may_reduce_across_its_threads() -> None:
    sch = Schedule(ops.get_op("rmsnorm").build({"m": 4, "n": 256}))
    blk = sch.get_block("rmsnorm_sumsq")
    _, k = sch.get_loops(blk)
    _, tx = sch.split(k, [None, 32])
    sch.bind(tx, "threadIdx.x")  # a cross-thread reduction: allowed
    assert sch.get(tx).thread == "threadIdx.x"


def test_a_copy_that_ignores_a_parallel_loop_may_write_a_private_tile() -> None:
    """A row of a copied under j does not depend on j; each iteration gets its own copy
    (the tile is used only under j), so j may run in parallel."""
    sch, b = _matmul()
    tile = sch.cache_read(b, 0, "global")
    _, j, _ = sch.get_loops(b)
    sch.compute_at(tile, j)
    sch.parallel(j)
    assert sch.get(j).kind == "parallel"


def test_a_block_that_ignores_a_parallel_loop_may_not_write_a_shared_buffer() -> None:
    """The add's whole nest under a parallel loop r it never reads: every r would write the
    same output."""
    func = ops.get_op("add").build({"m": 4, "n": 8})
    nest = children(root_body(func))[0]
    r = For(Var("r"), const(2), nest, kind="parallel")
    with pytest.raises(ScheduleError) as info:
        check_races(with_root(func, r))
    assert str(info.value) == (
        "block 'add' does not depend on parallel loop r and writes a buffer shared across "
        "its iterations, so they would race"
    )


def test_the_outermost_race_is_reported_first() -> None:
    """A parallel reduction loop k inside a parallel loop r the block ignores: both race,
    and the message names r, the outer one."""
    func = ops.get_op("matmul").build({"m": 8, "n": 16, "k": 32})
    nest = children(root_body(func))[0]

    def parallel_k(s):  # type: ignore[no-untyped-def]
        if isinstance(s, For) and s.var.name == "k":
            return dataclasses.replace(s, kind="parallel")
        return None

    r = For(Var("r"), const(2), map_stmt(nest, parallel_k), kind="parallel")
    with pytest.raises(ScheduleError, match=r"^block 'matmul' does not depend on parallel loop r "):
        check_races(with_root(func, r))
    with pytest.raises(ScheduleError, match=r"^parallel loop k would iterate the reduction"):
        check_races(with_root(func, map_stmt(nest, parallel_k)))
