"""GPU rows at any size (softmax, rmsnorm, layernorm): the row-per-block and row-per-warp
forms, vector widths kept under a guarded last pass, scalar rows where n is odd; nvcc-clean
sketches and (on a GPU) every sketch against numpy in fp16 and bf16."""

from __future__ import annotations

import random
import re

import pytest

from tunefleet.ir import build_source, ops
from tunefleet.tuner.candidates import Candidate, SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cuda("sm_90"))


def _sampler(op: str, dims: dict[str, int], dtype: str = "float16") -> SpaceSampler:
    func = ops.get_op(op).build(dims, dtype)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, CTX)
    return SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))


def _source(sampler: SpaceSampler, cand: Candidate) -> str:
    sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
    return build_source(sch, "cuda").source


def _kernel(sampler: SpaceSampler, cand: Candidate) -> str:
    """The kernel's own text, without the prelude's helpers."""
    src = _source(sampler, cand)
    return src[src.index('extern "C"') :]


@pytest.mark.parametrize(
    ("op", "dims", "forms"),
    [
        ("softmax", {"m": 4096, "n": 1000}, 6),  # vec 8, 4, 2: a block and a warp form each
        ("rmsnorm", {"m": 1000, "n": 3584}, 5),  # vec 2 over a warp: 56 passes, too many
        ("layernorm", {"m": 7, "n": 1001}, 2),  # odd: scalar, both forms
        ("softmax", {"m": 256, "n": 151936}, 1),  # 8 halves x 1024 threads, 19 passes
    ],
)
def test_rows_no_thread_stride_divides_get_both_forms(op, dims, forms, one_per_sketch) -> None:
    sampler = _sampler(op, dims)
    assert [s.name for s in sampler.sketches] == [f"gpu_rows({op})"] * forms
    for cand in one_per_sketch(sampler):
        unrolled = [int(n) for n in re.findall(r"#pragma unroll (\d+)", _kernel(sampler, cand))]
        assert unrolled and max(unrolled) <= 32  # no form unrolls more than 32 passes


def test_a_guarded_last_pass_keeps_the_vector_width(one_per_sketch) -> None:
    """1000 columns are 125 vectors of 8 halves: the guard compares the vector index, so every
    access of the row is 16 bytes wide."""
    sampler = _sampler("softmax", {"m": 4096, "n": 1000})
    for cand in one_per_sketch(sampler)[:2]:  # vec 8: a block, then a warp per row
        src = _kernel(sampler, cand)
        assert "< 125)" in src and "uint4" in src
        assert " x[" not in src and "(x[" not in src  # no scalar load of the row


def test_a_row_per_warp_keeps_its_statistics_in_registers(one_per_sketch) -> None:
    """The warp all-reduce leaves the total on every lane, so each lane stores it to its own
    register: no shared memory and no barrier between the statistics and the output."""
    sampler = _sampler("softmax", {"m": 4096, "n": 1000})
    warp = _kernel(sampler, one_per_sketch(sampler)[1])
    assert "threadIdx.y" in warp and "__shared__" not in warp and "__syncthreads" not in warp
    assert "softmax_max[0] = softmax_max_red[0];" in warp  # every lane, unguarded
    block = _kernel(sampler, one_per_sketch(sampler)[0])
    assert "__shared__" in block and "__syncthreads" in block


def test_a_symbolic_row_count_keeps_one_row_per_block() -> None:
    """With m unknown, rows are not grouped into blocks (a guard on rows would split a
    block's warps around its barriers); with m = 12 a block holds up to 4 rows."""
    from tunefleet.ir.expr import Var

    def rows_per_block(func) -> set[int]:
        sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, CTX)
        sampler = SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))
        cands = sampler.sample_unique(random.Random(0), 24, set())
        return {
            build_source(replay(func, c.trace, decisions=c.trace.decisions), "cuda").block[1]
            for c in cands
        }

    symbolic = ops.get_op("rmsnorm").build({"m": Var("m", "int64"), "n": 1000}, "float16")
    assert rows_per_block(symbolic) == {1}
    twelve = ops.get_op("rmsnorm").build({"m": 12, "n": 1000}, "float16")
    assert rows_per_block(twelve) == {1, 2, 4}


@pytest.mark.parametrize(
    ("op", "dims"), [("softmax", {"m": 12, "n": 1000}), ("layernorm", {"m": 7, "n": 1001})]
)
def test_every_rows_sketch_compiles_with_nvcc(op, dims, nvcc_compiles) -> None:
    nvcc_compiles(_sampler(op, dims, "bfloat16"), every_sketch=True)


ROWS_ON_GPU = [
    ("softmax", {"m": 12, "n": 1000}),  # guarded last pass, 1-4 rows per block
    ("rmsnorm", {"m": 7, "n": 3584}),
    ("layernorm", {"m": 6, "n": 1001}),  # odd: scalar
    ("softmax", {"m": 8, "n": 200}),  # short rows: more lanes than vectors
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("op", "dims"), ROWS_ON_GPU)
def test_every_rows_sketch_matches_numpy_on_the_gpu(every_sketch_runs_on_gpu, op, dims, dtype):
    from tunefleet.workers.results import Problem

    every_sketch_runs_on_gpu(_sampler(op, dims, dtype), Problem.create(op, dims, dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("op", "dims"), ROWS_ON_GPU)
def test_every_rows_sketch_matches_numpy_in_the_interpreter(
    every_sketch_interprets, op, dims, dtype
):
    from tunefleet.workers.results import Problem

    every_sketch_interprets(_sampler(op, dims, dtype), Problem.create(op, dims, dtype))
