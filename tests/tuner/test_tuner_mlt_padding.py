"""CPU multi-level tiling at odd shapes: padded sketches beside the plain ones, every point
matching numpy, the vector loop's input copied and the rows' input read in place."""

from __future__ import annotations

import random

import pytest

from tunefleet.ir import ops
from tunefleet.ir.codegen import build_source
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import CPU_GLOBAL_RULES, SpaceContext, SpaceGenerator
from tunefleet.workers import BuildInput, MeasureConfig, MeasureInput, Problem
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cpu(cores=2))


def _sketches(op: str, dims: dict[str, int]):  # type: ignore[no-untyped-def]
    func = ops.get_op(op).build(dims, "float32")
    gen = SpaceGenerator(
        ["auto_inline", "multi_level_tiling"], CPU_GLOBAL_RULES, with_default=False
    )
    return func, gen.generate(func, CTX)


def _padded(sketches) -> list:  # type: ignore[no-untyped-def]
    return [s for s in sketches if "pad_spatial" in s.trace.as_python()]


@pytest.mark.parametrize(
    ("op", "dims", "counts"),
    [
        ("matmul", {"m": 333, "n": 777, "k": 40}, "[3, 7, 0]"),
        ("matmul", {"m": 336, "n": 784, "k": 40}, None),  # tiles fit already
        ("batch_matmul", {"b": 1, "h": 4, "m": 333, "n": 64, "k": 32}, "[0, 0, 3, 0, 0]"),
    ],
)
def test_odd_extents_get_two_padded_sketches_beside_the_plain_two(op, dims, counts) -> None:
    _, sketches = _sketches(op, dims)
    padded = _padded(sketches)
    if counts is None:
        assert len(sketches) == 2 and not padded
        return
    assert len(sketches) == 4 and len(padded) == 2
    assert all(f"pad_spatial(b0, {counts})" in s.trace.as_python() for s in padded)


def test_the_lane_input_keeps_its_copy_and_the_row_input_is_read_in_place() -> None:
    func, sketches = _sketches("matmul", {"m": 333, "n": 777, "k": 40})
    sketch = _padded(sketches)[0]
    source = build_source(replay(func, sketch.trace, decisions=sketch.trace.decisions)).source
    assert "b_pad = " in source and "a_pad" not in source
    assert "(332) ? " in source  # a[min(i, 332), k]
    assert "< 333)" in source and "< 777)" in source  # only the write-back checks bounds


def test_every_sampled_padded_point_matches_numpy(executor, cpu) -> None:
    dims = {"m": 127, "n": 111, "k": 24}  # padded to 128 x 112
    func, sketches = _sketches("matmul", dims)
    padded = _padded(sketches)
    assert len(padded) == 2
    sampler = SpaceSampler(func, padded, CTX, default_postprocs("cpu"))
    cands = sampler.sample_unique(random.Random(5), 6, set())
    assert len(cands) >= 3
    config = MeasureConfig(guard_noise=False, repeats=2, warmup_ms=0.5, min_repeat_ms=0.2)
    problem = Problem.create("matmul", dims, "float32")
    items = [
        MeasureInput(BuildInput(cpu, workload=func, trace=c.trace_json), problem, config)
        for c in cands
    ]
    for cand, res in zip(cands, executor.measure_all(items), strict=True):
        assert res.ok, f"{cand.trace.as_python()}\n{res.status}: {res.message[:500]}"
