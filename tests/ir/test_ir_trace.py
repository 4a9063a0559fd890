"""Traces: JSON round trip, Python rendering, deterministic replay and mutated decisions."""

from __future__ import annotations

import shutil

import pytest
from ir_gcc_harness import check_against_reference

from tunefleet.ir import ops, structural_hash
from tunefleet.ir.default_schedule import default_schedule
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import Trace, trace_hash

MATMUL = ops.get_op("matmul")
DIMS = {"m": 16, "n": 48, "k": 24}


def _tiled(seed: int) -> Schedule:
    sch = Schedule(MATMUL.build(DIMS), seed=seed)
    blk = sch.get_block("matmul")
    wb = sch.cache_write(blk, 0, "local")
    i, j, k = sch.get_loops(blk)
    ti = sch.sample_perfect_tile(i, n=2, max_innermost_factor=8)
    tj = sch.sample_perfect_tile(j, n=2, max_innermost_factor=16)
    i0, i1 = sch.split(i, ti)
    j0, j1 = sch.split(j, tj)
    sch.reorder(i0, j0, i1, k, j1)
    sch.reverse_compute_at(wb, j0)
    sch.parallel(i0)
    sch.vectorize(j1)
    sch.decompose_reduction(blk, i1)
    return sch


def test_trace_json_round_trip_and_hash() -> None:
    sch = _tiled(0)
    t = sch.trace
    again = Trace.from_json(t.to_json())
    assert again == t
    assert trace_hash(again) == trace_hash(t)
    assert len(t.decisions) == 2
    assert all(t.insts[i].kind == "sample_perfect_tile" for i in t.decisions)
    assert trace_hash(_tiled(0).trace) == trace_hash(t)


def test_replay_reproduces_the_identical_program() -> None:
    sch = _tiled(1)
    replay = Trace.from_json(sch.trace.to_json()).apply(MATMUL.build(DIMS))
    assert replay.func == sch.func
    assert structural_hash(replay.func) == structural_hash(sch.func)
    assert replay.trace == sch.trace
    check_against_reference(replay, MATMUL, DIMS)


def test_replay_with_changed_decisions_gives_the_mutated_program() -> None:
    sch = _tiled(2)
    t = sch.trace
    idx = sorted(t.decisions)[1]
    for decision in ([3, 16], [48, 1], [6, 8]):
        mutated = t.apply(MATMUL.build(DIMS), {idx: decision})
        assert mutated.func != sch.func or t.decisions[idx] == decision
        check_against_reference(mutated, MATMUL, DIMS)
        j1 = [inst for inst in mutated.trace.insts if inst.kind == "split"][1].outputs[1]
        assert mutated.get(j1).extent.value == decision[1]
    with pytest.raises(ScheduleError, match="instruction #"):
        t.apply(MATMUL.build(DIMS), {idx: [5, 10]})
    with pytest.raises(ScheduleError, match="max_innermost_factor"):
        t.with_decision(idx, [1, 48]).apply(MATMUL.build(DIMS))


def test_as_python_runs_and_matches() -> None:
    sch = _tiled(3)
    code = sch.trace.as_python()
    assert "sch.sample_perfect_tile(" in code and "decision=" in code
    env: dict = {}
    exec(code, env)  # the rendering is valid Python over a Schedule
    fresh = Schedule(MATMUL.build(DIMS))
    env["apply_schedule"](fresh)
    assert fresh.func == sch.func


def test_default_schedule_trace_replays_for_every_op() -> None:
    for op in ops.list_ops():
        func = op.build(op.example)
        sch = default_schedule(func)
        assert sch.trace.apply(func).func == sch.func


pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
