"""Packed dense sketch: every decision builds, matches numpy and keeps the same structure."""

from __future__ import annotations

import itertools
import random

import pytest

from tunefleet.ir import ops
from tunefleet.ir.codegen import build_source
from tunefleet.ir.schedule import Schedule
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.padding import padding
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.rule_packed_dense import PANEL_WIDTHS, TILE_ROWS, dense_shape
from tunefleet.tuner.space import CPU_GLOBAL_RULES, SpaceContext, SpaceGenerator
from tunefleet.workers import BuildInput, MeasureConfig, MeasureInput, Problem
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cpu(cores=2))
DIMS = {"m": 32, "n": 128, "k": 48}


def _packed_sketch(op: str, dims: dict[str, int]):  # type: ignore[no-untyped-def]
    func = ops.get_op(op).build(dims, "float32")
    gen = SpaceGenerator(["auto_inline", "packed_dense"], CPU_GLOBAL_RULES, with_default=False)
    return func, gen.generate(func, CTX, seed=0)


@pytest.mark.parametrize(
    ("op", "dims"),
    [
        ("dense", DIMS),
        ("dense", {"m": 33, "n": 111, "k": 20}),
        ("dense", {"m": 333, "n": 777, "k": 5}),
        ("matmul", {"m": 33, "n": 111, "k": 20}),  # b[k, j] packed into panels
    ],
)
def test_every_sampled_point_matches_numpy(op, dims, executor, cpu) -> None:
    func, sketches = _packed_sketch(op, dims)
    assert [s.name for s in sketches] == [f"packed_dense({op})"]
    sampler = SpaceSampler(func, sketches, CTX, default_postprocs("cpu"))
    cands = sampler.sample_unique(random.Random(3), 8, set())
    assert len(cands) >= 2
    first = next(n for n, i in enumerate(sketches[0].trace.insts) if i.kind.startswith("sample"))
    widths = {c.trace.insts[first].inputs[0][c.trace.decisions[first]] for c in cands}
    assert all((dims["n"] + padding(dims["n"], PANEL_WIDTHS)) % w == 0 for w in widths)
    if dims is DIMS:
        assert len(widths) > 1, "the sample should cover several panel widths"
    config = MeasureConfig(guard_noise=False, repeats=2, warmup_ms=0.5, min_repeat_ms=0.2)
    problem = Problem.create(op, dims, "float32")
    items = [
        MeasureInput(BuildInput(cpu, workload=func, trace=c.trace_json), problem, config)
        for c in cands
    ]
    for cand, res in zip(cands, executor.measure_all(items), strict=True):
        assert res.ok, f"{cand.trace.as_python()}\n{res.status}: {res.message[:500]}"


def test_structure_does_not_depend_on_decisions() -> None:
    """Every combination of the rule's decisions replays into the same instructions."""
    func, (sketch,) = _packed_sketch("dense", DIMS)
    insts = sketch.trace.insts
    ours = [n for n, i in enumerate(insts) if i.kind == "sample_categorical"][:4]
    assert [insts[n].inputs[0] for n in ours] == [[8, 16, 32, 64], [2, 4, 8], [1, 2], [1, 2]]
    shapes = set()
    for choice in itertools.product(*(range(len(insts[n].inputs[0])) for n in ours)):
        decisions = {**sketch.trace.decisions, **dict(zip(ours, choice, strict=True))}
        sch = replay(func, sketch.trace, decisions=decisions)
        shapes.add(tuple((i.kind, repr(i.inputs)) for i in sch.trace.insts))
    assert len(shapes) == 1


def test_inner_loop_reads_the_packed_panel_contiguously() -> None:
    func, (sketch,) = _packed_sketch("dense", {"m": 8, "n": 64, "k": 32})
    sch = replay(func, sketch.trace, decisions=dict(sketch.trace.decisions))
    source = build_source(sch).source
    (line,) = [ln for ln in source.splitlines() if "* w_global[" in ln]
    load = line[line.index("w_global[") :]
    assert "/" not in load and "%" not in load


@pytest.mark.parametrize(
    ("op", "dims", "applies"),
    [
        ("dense", {"m": 8, "n": 32, "k": 16}, True),
        ("dense", {"m": 1, "n": 32, "k": 16}, False),  # decode GEMV: split-K's job
        ("dense", {"m": 9, "n": 21, "k": 16}, True),  # odd shapes are padded: 10 x 24
        ("dense", {"m": 8, "n": 67, "k": 16}, True),  # no panel width divides n: 72
        ("dense", {"m": 11, "n": 32, "k": 16}, True),  # no tile divides m: 12
        ("matmul", {"m": 8, "n": 32, "k": 16}, True),  # b[k, j] packed the same way
        ("rmsnorm", {"m": 8, "n": 32}, False),
    ],
)
def test_applies_only_to_dense_like_blocks(op: str, dims: dict[str, int], applies: bool) -> None:
    func = ops.get_op(op).build(dims, "float32")
    gen = SpaceGenerator(["packed_dense"], [], with_default=False)
    names = {s.name for s in gen.generate(func, CTX, seed=0)}
    assert any(name.startswith("packed_dense(") for name in names) == applies
    if op in ("dense", "matmul"):
        shape = dense_shape(Schedule(func), op)
        assert shape is not None
        assert (shape.weight_index, shape.m, shape.n) == (1, dims["m"], dims["n"])
        assert shape.k_major == (op == "matmul")


@pytest.mark.parametrize(
    ("extent", "tiles", "pad"),
    [
        (333, TILE_ROWS, 3),  # 336: tiles of 8 for 0.9% more rows
        (777, PANEL_WIDTHS, 7),  # 784: panels of 16; 800 for panels of 32 would cost 3%
        (784, PANEL_WIDTHS, 0),  # already a multiple of 16: no copy added
        (151936, PANEL_WIDTHS, 0),  # a real vocabulary, a multiple of 64
        (6, TILE_ROWS, 0),  # 8 rows would be a third more work: tiles of 2
        (11, TILE_ROWS, 1),  # no tile is cheap: the least padding, tiles of 4
    ],
)
def test_padding_buys_the_largest_tile_that_costs_under_a_64th(extent, tiles, pad) -> None:
    assert padding(extent, tiles) == pad


def test_an_odd_shape_runs_the_aligned_register_tile_without_extra_copies() -> None:
    """333 x 777: the weight's padded copy is the packed panel buffer, x is read in place at
    a clamped row, and the innermost loop has no bounds check (only the write-back does)."""
    func, (sketch,) = _packed_sketch("dense", {"m": 333, "n": 777, "k": 32})
    sch = replay(func, sketch.trace, decisions=dict(sketch.trace.decisions))
    source = build_source(sch).source
    assert source.count("aligned_alloc") == 1 and "w_pad = " in source
    assert "x_pad" not in source and "(332) ? " in source
    fma = next(ln for ln in source.splitlines() if "* w_pad[" in ln)
    inner = source[: source.index(fma)].rsplit("for (int64_t k", 1)[1]
    assert "if (" not in inner
    assert "< 333)" in source and "< 777)" in source
