"""Masked reductions: trim_masked stops a loop where the mask leaves every later step empty,
the result unchanged (gcc against numpy at sizes that are not tile multiples), rfactor keeps
the mask at its write-back, and loops the rule cannot prove are refused with one line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ir_gcc_harness import run_kernel

from tunefleet.ir import (
    Var,
    compute,
    create_prim_func,
    placeholder,
    reduce_axis,
    reduce_max,
    reduce_sum,
    select,
)
from tunefleet.ir.codegen import build_source
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import Const, const, eq
from tunefleet.ir.lower import lower
from tunefleet.ir.prim_mask import exists_over, masked_update
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.simplify import simplify
from tunefleet.ir.stmt import For
from tunefleet.ir.trace import Trace
from tunefleet.ir.visit import substitute, walk

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

N = Var("n")


def _causal_max():
    """row_max[i] = max over j <= i of x[i, j] (a causal score row's max)."""
    x = placeholder((N, N), "float32", "x")
    r = reduce_axis(N, "j")
    y = compute((N,), lambda i: reduce_max(select(r <= i, x[i, r], float("-inf")), r), "row_max")
    return create_prim_func([x, y], "causal_max")


def _causal_sum(width: int = 5):
    """ctx[i, c] = sum over j <= i of w[i, j] * v[j, c] (the weight selected, not the product)."""
    w = placeholder((N, N), "float32", "w")
    v = placeholder((N, width), "float32", "v")
    r = reduce_axis(N, "j")

    def weighted(i, c):
        return reduce_sum(select(r <= i, w[i, r], 0.0) * v[r, c], r)

    ctx = compute((N, width), weighted, "ctx")
    return create_prim_func([w, v, ctx], "causal_sum")


def _loop_extents(func) -> dict[str, object]:
    return {n.var.name: n.extent for n in walk(lower(func).body) if isinstance(n, For)}


def _at(extent, **values: int) -> int:
    env = {v: const(values[v.name]) for v in walk(extent) if isinstance(v, Var)}
    out = simplify(substitute(extent, env))
    assert isinstance(out, Const), out
    return int(out.value)


def _max_sched(tile: int = 8) -> tuple[Schedule, object]:
    sch = Schedule(_causal_max())
    _, j = sch.get_loops(sch.get_block("row_max"))
    jo, _ = sch.split(j, [None, tile])
    return sch, jo


def test_a_trimmed_max_stops_at_the_rows_last_visible_key_and_keeps_its_result() -> None:
    sch, jo = _max_sched()
    sch.trim_masked(jo)
    extent = _loop_extents(sch.func)[sch.get(jo).var.name]
    # row 0 reads one tile of 8 keys, row 20 three (keys 0..20), row 36 all five
    assert [_at(extent, n=37, i=i) for i in (0, 7, 8, 20, 36)] == [1, 1, 2, 3, 5]
    x = np.random.default_rng(0).standard_normal((37, 37)).astype(np.float32)
    want = np.array([x[i, : i + 1].max() for i in range(37)], np.float32)
    (got,) = run_kernel(build_source(sch), [x], {"n": 37})
    np.testing.assert_array_equal(got, want)


def test_rfactor_keeps_the_mask_so_the_write_back_loop_trims_too() -> None:
    """ctx = sum over tiles jo of a tile's partial sums (rfactor); the write-back adds a
    tile's partials only where some key of the tile is visible, so its tile loop trims."""
    sch = Schedule(_causal_sum())
    blk = sch.get_block("ctx")
    _, _, j = sch.get_loops(blk)
    jo, _ = sch.split(j, [None, 4])
    rf = sch.rfactor(jo, 0)
    wb_loops = sch.get_loops(sch.get_block("ctx"))
    assert masked_update(sch.get(sch.get_block("ctx"))) is not None  # the partials, masked
    sch.compute_at(rf, wb_loops[-1])
    sch.trim_masked(wb_loops[-1])
    extent = _loop_extents(sch.func)[sch.get(wb_loops[-1]).var.name]
    row = sch.get(wb_loops[0]).var.name
    assert [_at(extent, n=23, **{row: i}) for i in (0, 3, 4, 22)] == [1, 1, 2, 6]
    rng = np.random.default_rng(1)
    w = rng.standard_normal((23, 23)).astype(np.float32)
    v = rng.standard_normal((23, 5)).astype(np.float32)
    want = np.tril(w) @ v
    (got,) = run_kernel(build_source(sch), [w, v], {"n": 23})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_exists_over_keeps_the_condition_at_the_free_variables_best_value() -> None:
    jo, ji, i = Var("jo"), Var("ji"), Var("i")
    kept = exists_over(jo * 128 + ji <= i + 5, {ji: const(128)})
    for jv, iv in [(0, 0), (1, 122), (1, 123), (2, 300)]:
        want = any(jv * 128 + j <= iv + 5 for j in range(128))
        assert _at(select(kept, 1, 0), jo=jv, i=iv) == int(want)
    # a conjunct that is no linear inequality is dropped: true at worst
    assert exists_over(eq(ji % 3, 0), {ji: const(128)}) == const(True)


def test_a_replayed_trace_trims_the_same_loop() -> None:
    sch, jo = _max_sched(tile=16)
    sch.trim_masked(jo)
    again = Trace.from_json(sch.trace.to_json()).apply(_causal_max())
    assert again.func == sch.func


def _refused(sch: Schedule, loop, words: str) -> None:
    before = sch.func, sch.trace
    with pytest.raises(ScheduleError, match=words) as info:
        sch.trim_masked(loop)
    assert (sch.func, sch.trace) == before
    assert "\n" not in str(info.value)


def test_loops_the_mask_does_not_prove_empty_are_refused() -> None:
    sch, _ = _max_sched()
    i = sch.get_loops(sch.get_block("row_max"))[0]
    _refused(sch, i, "indexes the output")
    sch.parallel(i)
    _refused(sch, i, "needs a serial loop")

    x = placeholder((N, N), "float32", "x")
    r = reduce_axis(N, "j")
    plain = compute((N,), lambda i: reduce_sum(x[i, r], r), "row_sum")
    sch = Schedule(create_prim_func([x, plain], "row_sum"))
    _, j = sch.get_loops(sch.get_block("row_sum"))
    _refused(sch, j, "no masked reduction")

    later = compute((N,), lambda i: reduce_max(select(r >= i, x[i, r], float("-inf")), r), "tail")
    sch = Schedule(create_prim_func([x, later], "tail_max"))
    _, j = sch.get_loops(sch.get_block("tail"))
    _refused(sch, j, "does not bound")


def test_a_reduction_stepping_backwards_with_the_loop_keeps_its_loop() -> None:
    """Trimming drops a loop's last steps, so the reduction's first step (its init) must be
    the loop's first: a binding that falls with the loop, or uses it non-linearly, is not
    trimmed."""
    from tunefleet.ir.prim_mask import _falls

    jo, ji = Var("jo"), Var("ji")
    assert not _falls(jo * 128 + ji, jo)
    assert _falls((const(4) - jo) * 128 + ji, jo)
    assert _falls((jo * 128 + ji) // 3, jo)


def _causal_weights(width: int = 5):
    """p[i, j] = exp(x[i, j]); ctx[i, c] = sum over j <= i of p[i, j] * v[j, c] (the mask
    on the weight an intermediate block computes)."""
    from tunefleet.ir import exp

    x = placeholder((N, N), "float32", "x")
    v = placeholder((N, width), "float32", "v")
    p = compute((N, N), lambda i, j: exp(x[i, j]), "p")
    r = reduce_axis(N, "j")
    ctx = compute((N, width), lambda i, c: reduce_sum(select(r <= i, p[i, r], 0.0) * v[r, c], r),
                  "ctx")  # fmt: skip
    return create_prim_func([x, v, ctx], "causal_weights")


def test_a_sums_mask_moves_into_the_block_computing_its_weight() -> None:
    """After trim_masked (which reads the mask off the sum) the weight's block zeroes what
    the mask hides and the sum adds plain products (what a tensor-core tile takes): the
    result is unchanged, and a replayed trace does the same."""
    sch = Schedule(_causal_weights())
    _, _, j = sch.get_loops(sch.get_block("ctx"))
    jo, _ = sch.split(j, [None, 4])
    sch.trim_masked(jo)
    sch.mask_into_producer(sch.get_block("ctx"))
    assert masked_update(sch.get(sch.get_block("ctx"))) is None  # no select left in the sum
    assert "select(v_j <= v_i, exp(" in sch.func.script()  # the weight's own block
    rng = np.random.default_rng(2)
    x = rng.standard_normal((23, 23)).astype(np.float32)
    v = rng.standard_normal((23, 5)).astype(np.float32)
    want = np.tril(np.exp(x)) @ v
    (got,) = run_kernel(build_source(sch), [x, v], {"n": 23})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    again = Trace.from_json(sch.trace.to_json()).apply(_causal_weights())
    assert again.func == sch.func


def test_a_mask_stays_where_its_weight_is_no_intermediate_or_it_is_no_sum() -> None:
    for func, name, words in ((_causal_sum(), "ctx", "no select"),
                              (_causal_max(), "row_max", "is not a sum")):  # fmt: skip
        sch = Schedule(func)
        block = sch.get_block(name)
        before = sch.func, sch.trace
        with pytest.raises(ScheduleError, match=words) as info:
            sch.mask_into_producer(block)
        assert (sch.func, sch.trace) == before and "\n" not in str(info.value)
