"""GPU multi-level tiling: which reductions it claims, fixed structure, nvcc-clean and
replayable samples, and (on a GPU) sampled schedules that match numpy."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest

from tunefleet.ir import build_source, ops
from tunefleet.ir.trace import Trace
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cuda("sm_86"))
RULE = "gpu_multi_level_tiling"
# (op, shape, dtype, attrs)
CLAIMED = [
    ("matmul", {"m": 64, "n": 128, "k": 64}, "float32", {}),
    ("dense", {"m": 48, "n": 40, "k": 72}, "float32", {}),
    ("batch_matmul", {"b": 1, "h": 8, "m": 16, "n": 128, "k": 64}, "float16", {}),
    (
        "batch_matmul",
        {"b": 1, "h": 4, "m": 32, "n": 16, "k": 64},
        "float32",
        {"transpose_b": False},
    ),
    ("dense", {"m": 24, "n": 100, "k": 128}, "float16", {}),  # no tensor-core tile fits n
]
# also checked on the GPU: odd sizes, m=9, a 4-bit dense, grouped-query attention
ODD = [
    ("matmul", {"m": 7, "n": 77, "k": 7}, "float32", {}),
    ("dense", {"m": 9, "n": 512, "k": 256}, "float16", {}),  # m <= 8: the GEMV rows
    ("q4_dense", {"m": 32, "n": 256, "k": 128}, "float16", {}),
    ("batch_matmul", {"b": 1, "h": 8, "m": 16, "n": 64, "k": 64}, "float16", {"group": 4}),
]
OTHERS = [
    ("dense", {"m": 1, "n": 256, "k": 1024}, "float16", "gpu_gemv"),
    ("dense", {"m": 256, "n": 128, "k": 128}, "float16", "gpu_tensor_core"),
    ("rmsnorm", {"m": 8, "n": 1024}, "float16", "gpu_rows"),
]


def _sampler(op: str, dims: dict[str, int], dtype: str, attrs: dict[str, Any]) -> SpaceSampler:
    func = ops.get_op(op).build(dims, dtype, **attrs)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, CTX)
    return SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))


def _ids(cases: list[tuple]) -> list[str]:
    return [f"{c[0]}-{c[2]}-" + "x".join(str(v) for v in c[1].values()) for c in cases]


@pytest.mark.parametrize(("op", "dims", "dtype", "attrs"), CLAIMED, ids=_ids(CLAIMED))
def test_claims_reductions_with_a_fixed_structure(op, dims, dtype, attrs) -> None:
    """Every sample replays the sketch's instructions unchanged, launches a whole number of
    warps where the shape allows, and keeps its accumulator in a per-thread register tile."""
    sampler = _sampler(op, dims, dtype, attrs)
    assert [s.name.split("(")[0] for s in sampler.sketches] == [RULE, RULE]  # padded or not
    cands = sampler.sample_unique(random.Random(0), 4, set(), max_tries=20)
    assert len(cands) >= 3, f"only {len(cands)} valid samples, {sampler.rejected} rejected"
    for cand in cands:
        kinds = [i.kind for i in sampler.sketches[cand.sketch].trace.insts]
        assert [i.kind for i in cand.trace.insts] == kinds
        ks = build_source(replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda")
        threads = ks.block[0] * ks.block[1] * ks.block[2]
        if all(v % 32 == 0 for v in (dims["n"], dims["m"])):
            assert threads % 32 == 0, threads
        sizes = [int(n) for n in re.findall(r"\n *float \w+\[(\d+)\] __attribute__", ks.source)]
        assert sizes and max(sizes) <= 256, sizes  # not the whole output per thread
        assert "__shared__" in ks.source and "__syncthreads();" in ks.source


@pytest.mark.parametrize(("op", "dims", "dtype", "rule"), OTHERS)
def test_earlier_rules_keep_their_blocks(op, dims, dtype, rule) -> None:
    sampler = _sampler(op, dims, dtype, {})
    assert all(s.name.startswith(rule) and RULE not in s.name for s in sampler.sketches)


def test_mutated_decisions_always_replay() -> None:
    """Every categorical's candidates keep the splits perfect, so a mutant is always valid."""
    from tunefleet.tuner.mutators import MutateCategorical

    op, dims, dtype, attrs = CLAIMED[0]
    sampler = _sampler(op, dims, dtype, attrs)
    rng = random.Random(7)
    parents = sampler.sample_unique(rng, 3, set())
    mutants = [MutateCategorical().mutate(p.trace, rng) for p in parents for _ in range(4)]
    assert all(m is not None for m in mutants)
    replayed = [sampler.from_trace(m) for m in mutants]
    assert all(c is not None for c in replayed), sampler.rejected


def test_cpu_spaces_do_not_use_it() -> None:
    func = ops.get_op("matmul").build({"m": 64, "n": 64, "k": 64}, "float32")
    sketches = SpaceGenerator(*rules_for("cpu")).generate(func, SpaceContext(Target.cpu()))
    assert all(RULE not in s.name for s in sketches)


def test_traces_replay_to_identical_source_from_json() -> None:
    op, dims, dtype, attrs = CLAIMED[4]
    sampler = _sampler(op, dims, dtype, attrs)
    cands = sampler.sample_unique(random.Random(3), 3, set())
    assert cands
    for cand in cands:
        direct = build_source(
            replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda"
        )
        again = Trace.from_json(cand.trace_json)
        replayed = build_source(replay(sampler.func, again, decisions=again.decisions), "cuda")
        assert replayed.source == direct.source
        assert replayed.block == direct.block and replayed.grid == direct.grid


@pytest.mark.parametrize(("op", "dims", "dtype", "attrs"), CLAIMED[::2], ids=_ids(CLAIMED[::2]))
def test_samples_compile_with_nvcc(op, dims, dtype, attrs, nvcc_compiles) -> None:
    nvcc_compiles(_sampler(op, dims, dtype, attrs))


@pytest.fixture(scope="module")
def gpu(tmp_path_factory: pytest.TempPathFactory):
    from tunefleet.workers.builder import BuildConfig
    from tunefleet.workers.runner import Runner, RunnerConfig
    from tunefleet.workers.targets import resolve_target

    cache = str(tmp_path_factory.mktemp("mlt-kernels"))
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        yield resolve_target("cuda"), runner, BuildConfig(cache_dir=cache, timeout_s=120)


@pytest.mark.gpu
@pytest.mark.parametrize(("op", "dims", "dtype", "attrs"), CLAIMED + ODD, ids=_ids(CLAIMED + ODD))
def test_sampled_schedules_match_numpy_on_the_gpu(gpu, op, dims, dtype, attrs) -> None:
    from tunefleet.workers.builder import BuildInput, build
    from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status

    target, runner, config = gpu
    sampler = _sampler(op, dims, dtype, attrs)
    assert all(s.name.startswith(RULE) for s in sampler.sketches)
    fast = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=20)
    problem = Problem.create(op, dims, dtype, **attrs)
    for cand in sampler.sample_unique(random.Random(5), 3, set()):
        built = build(BuildInput(target, workload=sampler.func, trace=cand.trace_json), config)
        assert built.status is Status.OK, built.message
        result = runner.run(RunInput(built.artifact, problem, fast))
        assert result.status is Status.OK, f"{result.message}\n{cand.trace.as_python()}"


@pytest.mark.parametrize(("op", "dims", "dtype", "attrs"), CLAIMED + ODD, ids=_ids(CLAIMED + ODD))
def test_every_sketch_matches_numpy_in_the_interpreter(
    every_sketch_interprets, op, dims, dtype, attrs
) -> None:
    from tunefleet.workers.results import Problem

    sampler = _sampler(op, dims, dtype, attrs)
    every_sketch_interprets(sampler, Problem.create(op, dims, dtype, **attrs))
