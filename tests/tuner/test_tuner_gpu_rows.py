"""GPU rows at any size (softmax, rmsnorm, layernorm): the row-per-block and row-per-warp
forms, vector widths kept under a guarded last pass, scalar rows where n is odd; nvcc-clean
sketches and (on a GPU) every sketch against numpy in fp16 and bf16."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tunefleet.ir import build_source, ops
from tunefleet.tuner.candidates import Candidate, SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.rule_gpu_rows import MAX_PASSES
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cuda("sm_90"))


def _sampler(op: str, dims: dict[str, int], dtype: str = "float16") -> SpaceSampler:
    func = ops.get_op(op).build(dims, dtype)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, CTX)
    return SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))


def _one_per_sketch(sampler: SpaceSampler, seed: int = 0) -> list[Candidate]:
    """A sampled candidate of every sketch of the space."""
    found: dict[int, Candidate] = {}
    rng = random.Random(seed)
    for _ in range(20):
        for cand in sampler.sample_unique(rng, 8, set()):
            found.setdefault(cand.sketch, cand)
        if len(found) == len(sampler.sketches):
            break
    assert len(found) == len(sampler.sketches), "a sketch gave no valid candidate"
    return [found[k] for k in sorted(found)]


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
def test_rows_no_thread_stride_divides_get_both_forms(op, dims, forms) -> None:
    sampler = _sampler(op, dims)
    assert [s.name for s in sampler.sketches] == [f"gpu_rows({op})"] * forms
    for cand in _one_per_sketch(sampler):
        src = _source(sampler, cand)
        assert "#pragma unroll" in src
        passes = [int(p) for p in src.split("#pragma unroll ")[1:] for p in [p.split()[0]]]
        assert max(passes) <= max(MAX_PASSES, 8)


def test_a_guarded_last_pass_keeps_the_vector_width() -> None:
    """1000 columns are 125 vectors of 8 halves: the guard compares the vector index, so every
    access of the row is 16 bytes wide."""
    sampler = _sampler("softmax", {"m": 4096, "n": 1000})
    for cand in _one_per_sketch(sampler)[:2]:  # vec 8: a block, then a warp per row
        src = _kernel(sampler, cand)
        assert "< 125)" in src and "uint4" in src
        assert " x[" not in src and "(x[" not in src  # no scalar load of the row


def test_a_row_per_warp_keeps_its_statistics_in_registers() -> None:
    """The warp all-reduce leaves the total on every lane, so each lane stores it to its own
    register: no shared memory and no barrier between the statistics and the output."""
    sampler = _sampler("softmax", {"m": 4096, "n": 1000})
    warp = _kernel(sampler, _one_per_sketch(sampler)[1])
    assert "threadIdx.y" in warp and "__shared__" not in warp and "__syncthreads" not in warp
    assert "softmax_max[0] = softmax_max_red[0];" in warp  # every lane, unguarded
    block = _kernel(sampler, _one_per_sketch(sampler)[0])
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


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize(
    ("op", "dims"), [("softmax", {"m": 12, "n": 1000}), ("layernorm", {"m": 7, "n": 1001})]
)
def test_every_rows_sketch_compiles_with_nvcc(op, dims, tmp_path: Path) -> None:
    sampler = _sampler(op, dims, "bfloat16")
    for n, cand in enumerate(_one_per_sketch(sampler)):
        src = tmp_path / f"k{n}.cu"
        src.write_text(_source(sampler, cand))
        cmd = ["nvcc", "-cubin", "-arch=sm_80", "-O3", "-o", str(tmp_path / "k.cubin"), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory):
    from tunefleet.workers.builder import BuildConfig
    from tunefleet.workers.runner import Runner, RunnerConfig
    from tunefleet.workers.targets import resolve_target

    cache = str(tmp_path_factory.mktemp("rows-kernels"))
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        yield resolve_target("cuda"), runner, BuildConfig(cache_dir=cache, timeout_s=120)


ROWS_ON_GPU = [
    ("softmax", {"m": 12, "n": 1000}),  # guarded last pass, 1-4 rows per block
    ("rmsnorm", {"m": 7, "n": 3584}),
    ("layernorm", {"m": 6, "n": 1001}),  # odd: scalar
    ("softmax", {"m": 8, "n": 200}),  # short rows: more lanes than vectors
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("op", "dims"), ROWS_ON_GPU)
def test_every_rows_sketch_matches_numpy_on_the_gpu(gpu, op, dims, dtype) -> None:
    from tunefleet.workers.builder import BuildInput, build
    from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status

    target, runner, config = gpu
    sampler = _sampler(op, dims, dtype)
    fast = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=20)
    problem = Problem.create(op, dims, dtype)
    for cand in _one_per_sketch(sampler, seed=3):
        built = build(BuildInput(target, workload=sampler.func, trace=cand.trace_json), config)
        assert built.status is Status.OK, built.message
        result = runner.run(RunInput(built.artifact, problem, fast))
        assert result.status is Status.OK, f"{result.message}\n{cand.trace.as_python()}"
