"""GPU elementwise outputs (silu_mul, add, rope, gelu): vectors over threads at any size, wide
accesses under a guarded last block, scalar where the last dim is odd; nvcc-clean sketches and
(on a GPU) every sketch against numpy in fp16 and bf16."""

from __future__ import annotations

import random

import pytest

from tunefleet.ir import build_source, ops
from tunefleet.ir.expr import Var
from tunefleet.tuner.candidates import Candidate, SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cuda("sm_90"))
RULE = "gpu_elementwise"


def _sampler(op: str, dims: dict, dtype: str = "float16") -> SpaceSampler:
    func = ops.get_op(op).build(dims, dtype)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, CTX)
    return SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))


def _kernel(sampler: SpaceSampler, cand: Candidate) -> str:
    sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
    src = build_source(sch, "cuda").source
    return src[src.index('extern "C"') :]


@pytest.mark.parametrize(
    ("op", "dims", "widths"),
    [
        ("silu_mul", {"m": 7, "n": 5120}, 3),  # 8, 4 and 2 halves
        ("add", {"m": 7, "n": 1001}, 1),  # odd: scalar
        ("rope", {"m": 7, "h": 32, "d": 128}, 3),
        ("gelu", {"m": Var("m", "int64"), "n": 14336}, 3),  # tokens as they come
    ],
)
def test_elementwise_outputs_get_a_sketch_per_vector_width(
    op, dims, widths, one_per_sketch
) -> None:
    sampler = _sampler(op, dims)
    assert [s.name for s in sampler.sketches] == [f"{RULE}({op})"] * widths
    for cand in one_per_sketch(sampler):
        assert "blockIdx_x" in _kernel(sampler, cand)


def test_a_guarded_last_block_keeps_the_vector_width() -> None:
    """7 x 5120 halves are 4480 vectors of 8: the guard compares the vector index, so every
    access is 16 bytes wide whatever the threads and vectors per thread sampled."""
    sampler = _sampler("silu_mul", {"m": 7, "n": 5120})
    widest = sampler.sketches[0]
    cands = [c for c in sampler.sample_unique(random.Random(1), 15, set()) if c.sketch == 0]
    assert cands and widest.name == f"{RULE}(silu_mul)"
    sources = [_kernel(sampler, cand) for cand in cands]
    assert any("< 4480)" in src for src in sources)  # some grid overshoots the vectors
    for src in sources:
        assert src.count("uint4") >= 3 and "gate[" not in src and "up[" not in src


def test_outputs_with_producers_or_reductions_are_left_to_other_rules() -> None:
    rows = _sampler("rmsnorm", {"m": 7, "n": 4096})
    assert not any(RULE in s.name for s in rows.sketches)
    dense = _sampler("dense", {"m": 1, "n": 256, "k": 1024})
    assert not any(RULE in s.name for s in dense.sketches)


@pytest.mark.parametrize(
    ("op", "dims"), [("silu_mul", {"m": 7, "n": 5120}), ("rope", {"m": 5, "h": 4, "d": 64})]
)
def test_every_elementwise_sketch_compiles_with_nvcc(op, dims, nvcc_compiles) -> None:
    nvcc_compiles(_sampler(op, dims, "bfloat16"), every_sketch=True)


ON_GPU = [
    ("silu_mul", {"m": 7, "n": 5120}),
    ("add", {"m": 7, "n": 1001}),
    ("rope", {"m": 5, "h": 4, "d": 64}),
    ("gelu", {"m": 3, "n": 1000}),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("op", "dims"), ON_GPU)
def test_every_elementwise_sketch_matches_numpy_on_the_gpu(
    every_sketch_runs_on_gpu, op, dims, dtype
):
    from tunefleet.workers.results import Problem

    every_sketch_runs_on_gpu(_sampler(op, dims, dtype), Problem.create(op, dims, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("op", "dims"), ON_GPU)
def test_every_elementwise_sketch_matches_numpy_in_the_interpreter(
    every_sketch_interprets, op, dims, dtype
):
    from tunefleet.workers.results import Problem

    every_sketch_interprets(_sampler(op, dims, dtype), Problem.create(op, dims, dtype))
