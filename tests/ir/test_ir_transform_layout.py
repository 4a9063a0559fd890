"""transform_layout: packed dense weights match numpy, replay exactly, bad input is refused."""

from __future__ import annotations

import pytest
from ir_gcc_harness import check_against_reference

from tunefleet.ir import ops
from tunefleet.ir.codegen import build_source
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import BufferLoad
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import Trace
from tunefleet.ir.visit import walk

# w is 128 x 160 floats = 80 KiB: the packed copy is over the stack limit (heap-allocated)
DIMS = {"m": 4, "n": 128, "k": 160}


def _packed(dims: dict[str, int], nb: int = 16) -> Schedule:
    """Dense with w packed as wp[j // nb, k, j % nb] and an i x nb register tile over k."""
    func = ops.get_op("dense").build(dims, "float32")
    sch = Schedule(func)
    b = sch.get_block("dense")
    wp = sch.cache_read(b, 1, "global")
    sch.transform_layout(wp, 0, 0, nb, [0, 2, 1])
    a0 = sch.get_loops(wp)[0]
    sch.parallel(sch.split(a0, [None, nb])[0])
    i, j, k = sch.get_loops(b)
    jo, ji = sch.split(j, [None, nb])
    sch.reorder(jo, i, k, ji)
    sch.parallel(jo)
    sch.decompose_reduction(b, k)
    sch.vectorize(ji)
    return sch


def test_packed_dense_matches_numpy_with_contiguous_inner_loads() -> None:
    sch = _packed(DIMS)
    wp = next(buf for buf in sch.func.root.alloc_buffers if buf.name == "w_global")
    assert [int(d.value) for d in wp.shape] == [128 // 16, 160, 16]
    source = build_source(sch).source
    assert "aligned_alloc" in source
    # the compute nest reads the packed weight at j_0 * 2560 + k * 16 + j_1: no div/mod
    compute = source[source.index("for (int64_t j_0") :]
    assert " / " not in compute and " % " not in compute
    assert "(k * 16)" in compute
    check_against_reference(sch, ops.get_op("dense"), DIMS)


def test_pure_permutation_transposes_the_copy() -> None:
    dims = {"m": 3, "n": 8, "k": 24}
    func = ops.get_op("dense").build(dims, "float32")
    sch = Schedule(func)
    wt = sch.cache_read(sch.get_block("dense"), 1, "global")
    sch.transform_layout(wt, 0, None, None, [1, 0])
    loads = [n for n in walk(sch.get(sch.get_block("dense")).body) if isinstance(n, BufferLoad)]
    (w_load,) = [n for n in loads if n.buffer.name == "w_global"]
    assert [int(d.value) for d in w_load.buffer.shape] == [24, 8]
    assert [str(i) for i in w_load.indices] == ["v_k", "v_j"]
    check_against_reference(sch, ops.get_op("dense"), dims)


def test_trace_json_round_trip_reproduces_the_source() -> None:
    sch = _packed(DIMS, nb=32)
    text = sch.trace.to_json()
    again = Trace.from_json(text).apply(sch.original)
    assert again.func == sch.func
    assert build_source(again).source == build_source(sch).source
    assert "sch.transform_layout(b1, 0, 0, 32, [0, 2, 1])" in sch.trace.as_python()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 0, 48, [0, 2, 1]), "factor 48 does not divide dim 0 (128) of w_global"),
        ((0, 2, 16, [0, 2, 1]), "w_global has 2 dims; axis 2 is out of range"),
        ((0, 0, 16, [0, 1]), "order [0, 1] is not a permutation of the 3 dims"),
        ((0, 0, None, [1, 0]), "needs both axis and factor, or neither"),
        ((0, 0, 2.5, [0, 2, 1]), "transform_layout factor must be an int, got 2.5"),
        ((1, 0, 16, [0, 2, 1]), "writes 1 buffers; index 1 is out of range"),
    ],
)
def test_bad_input_is_refused_with_one_clear_line(args: tuple, message: str) -> None:
    func = ops.get_op("dense").build(DIMS, "float32")
    sch = Schedule(func)
    wp = sch.cache_read(sch.get_block("dense"), 1, "global")
    before = (sch.func, len(sch.trace))
    with pytest.raises(ScheduleError) as err:
        sch.transform_layout(wp, *args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (sch.func, len(sch.trace)) == before


def test_parameters_keep_their_layout() -> None:
    func = ops.get_op("dense").build(DIMS, "float32")
    sch = Schedule(func)
    with pytest.raises(ScheduleError, match=r"dense is a parameter of dense; .*cache_read"):
        sch.transform_layout(sch.get_block("dense"), 0, 1, 16, [0, 2, 1])
