"""pad_spatial: padded blocks match numpy, replay exactly, and bad input is refused."""

from __future__ import annotations

import pytest
from ir_gcc_harness import check_against_reference

from tunefleet.ir import ops
from tunefleet.ir.codegen import build_source
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import blocks
from tunefleet.ir.trace import Trace

DIMS = {"m": 33, "n": 111, "k": 20}


def _padded_dense(dims: dict[str, int], counts: list[int], **attrs: object) -> Schedule:
    sch = Schedule(ops.get_op("dense").build(dims, "float32", **attrs))
    name = "dense_acc" if attrs.get("bias") else "dense"
    sch.pad_spatial(sch.get_block(name), counts)
    return sch


def test_padded_dense_matches_numpy_and_stores_only_the_valid_region() -> None:
    sch = _padded_dense(DIMS, [7, 1, 0])
    shapes = {b.name: [int(d.value) for d in b.shape] for b in sch.func.root.alloc_buffers}
    assert shapes == {"dense_pad": [40, 112], "x_pad": [40, 20], "w_pad": [112, 20]}
    assert [br.block.name for br, _ in blocks(sch.func)] == [
        "x_pad",
        "w_pad",
        "dense",
        "dense_pad_write_back",
    ]
    check_against_reference(sch, ops.get_op("dense"), DIMS)


def test_inlined_copies_read_the_input_in_place_at_a_clamped_row() -> None:
    sch = _padded_dense(DIMS, [7, 1, 0])
    x_copy, w_copy, write_back = sch.trace.insts[-1].outputs
    sch.compute_inline(x_copy)
    sch.compute_inline(w_copy)
    source = build_source(sch).source
    assert "x_pad" not in source and "w_pad" not in source
    assert "(32) ? (i) : (32)" in source  # x[min(i, 32), k]: the last row repeated
    assert sch.get(write_back).name == "dense_pad_write_back"
    check_against_reference(sch, ops.get_op("dense"), DIMS)


def test_only_inputs_indexed_by_a_padded_var_are_copied() -> None:
    """Padding n alone copies w and leaves x; a bias block after the nest still sees every
    valid column."""
    dims = {"m": 6, "n": 30, "k": 9}
    sch = _padded_dense(dims, [0, 2, 0], bias=True)
    assert {b.name for b in sch.func.root.alloc_buffers} == {
        "dense_acc",
        "dense_acc_pad",
        "w_pad",
    }
    check_against_reference(sch, ops.get_op("dense"), dims, bias=True)


def test_tiled_after_padding_the_splits_are_perfect_and_unguarded() -> None:
    """Pad to the tile, then tile: the compute nest carries no predicate; only the write-back
    (moved under the tile loop) checks the bounds."""
    sch = _padded_dense(DIMS, [7, 1, 0])
    *_, write_back = sch.trace.insts[-1].outputs
    b = sch.get_block("dense")
    i, j, k = sch.get_loops(b)
    i0, i1 = sch.split(i, [None, 8])
    j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, k, i1, j1)
    sch.set_scope(b, 0, "local")
    sch.reverse_compute_at(write_back, j0)
    sch.decompose_reduction(b, k)
    sch.vectorize(j1)
    source = build_source(sch).source
    compute = source[source.index("for (int64_t k") : source.index("for (int64_t ax0 = 0")]
    assert "if (" not in compute
    assert "< 33)" in source and "< 111)" in source  # the write-back's guard
    check_against_reference(sch, ops.get_op("dense"), DIMS)


def test_trace_json_round_trip_reproduces_the_source() -> None:
    sch = _padded_dense(DIMS, [7, 1, 0])
    sch.compute_inline(sch.trace.insts[-1].outputs[0])
    again = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert again.func == sch.func
    assert build_source(again).source == build_source(sch).source
    assert "b1, b2, b3, = sch.pad_spatial(b0, [7, 1, 0])" in sch.trace.as_python()


def test_padding_the_rows_of_rope_leaves_its_paired_columns_alone() -> None:
    """rope reads x at j and (j + d/2) % d: the token axis pads, the paired one cannot."""
    dims = {"m": 5, "h": 2, "d": 8}
    sch = Schedule(ops.get_op("rope").build(dims, "float32"))
    sch.pad_spatial(sch.get_block("rope"), [3, 0, 0])
    check_against_reference(sch, ops.get_op("rope"), dims)
    sch = Schedule(ops.get_op("rope").build(dims, "float32"))
    with pytest.raises(ScheduleError, match=r"dim 2 of x indexed by a padded iter var alone"):
        sch.pad_spatial(sch.get_block("rope"), [0, 0, 8])


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([7, 1], "one count >= 0 per iter var of block 'dense' (v_i, v_j, v_k), got [7, 1]"),
        ([7, -1, 0], "one count >= 0 per iter var"),
        ([0, 0, 4], "v_k of block 'dense' is a reduction"),
        ([0, 0, 0], "got no padding for block 'dense'; nothing to do"),
    ],
)
def test_bad_counts_are_refused_with_one_clear_line(counts: list[int], message: str) -> None:
    sch = Schedule(ops.get_op("dense").build(DIMS, "float32"))
    b = sch.get_block("dense")
    before = (sch.func, len(sch.trace))
    with pytest.raises(ScheduleError) as err:
        sch.pad_spatial(b, counts)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (sch.func, len(sch.trace)) == before


def test_a_split_nest_is_refused() -> None:
    sch = Schedule(ops.get_op("dense").build(DIMS, "float32"))
    b = sch.get_block("dense")
    sch.split(sch.get_loops(b)[0], [None, 3])
    with pytest.raises(ScheduleError, match="apply it before split, fuse or compute_at"):
        sch.pad_spatial(b, [7, 1, 0])
