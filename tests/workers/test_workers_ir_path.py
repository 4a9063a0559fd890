"""Builds from the IR: replay a trace, generate C, compile, check against the op library."""

from __future__ import annotations

import pickle

import pytest

from tunefleet import ir
from tunefleet.ir.ops import get_op
from tunefleet.workers.builder import BuildInput, build
from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig

FAST = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.5, timeout_s=10)
CASES = [
    ("matmul", {"m": 48, "n": 40, "k": 72}, "float32"),
    ("rmsnorm", {"m": 8, "n": 256}, "float32"),
    ("softmax", {"m": 8, "n": 128}, "float16"),
    ("softmax", {"m": 8, "n": 128}, "bfloat16"),
]


@pytest.fixture(scope="module")
def runner(cache_dir):
    with Runner(RunnerConfig(device="cpu", cache_dir=cache_dir)) as r:
        yield r


@pytest.mark.parametrize(("op", "shape", "dtype"), CASES)
def test_default_schedule_of_library_ops_passes_the_check(
    runner, build_config, cpu_target, op, shape, dtype
):
    func = get_op(op).build(shape, dtype)
    built = build(BuildInput(cpu_target, workload=func), build_config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create(op, shape, dtype), FAST))
    assert result.status is Status.OK, result.message
    assert result.max_rel_err < {"float32": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}[dtype]


def test_a_replayed_trace_builds_the_same_source(build_config, cpu_target):
    func = get_op("matmul").build({"m": 32, "n": 32, "k": 32}, "float32")
    sch = ir.Schedule(func)
    i, j, _k = sch.get_loops(sch.get_block("matmul"))
    i_outer, i_inner = sch.split(i, [None, 8])
    sch.reorder(i_outer, j, i_inner)
    direct = build(BuildInput(cpu_target, kernel=ir.build_source(sch)), build_config)
    replayed = build(BuildInput(cpu_target, workload=func, trace=sch.trace.to_json()), build_config)
    assert direct.status is replayed.status is Status.OK
    assert replayed.artifact.key == direct.artifact.key and replayed.cache_hit


def test_a_trace_that_does_not_fit_the_workload_is_a_build_error(build_config, cpu_target):
    matmul = get_op("matmul").build({"m": 32, "n": 32, "k": 32}, "float32")
    sch = ir.Schedule(matmul)
    sch.split(sch.get_loops(sch.get_block("matmul"))[0], [None, 8])
    other = get_op("rmsnorm").build({"m": 8, "n": 64}, "float32")
    result = build(BuildInput(cpu_target, workload=other, trace=sch.trace), build_config)
    assert result.status is Status.BUILD_ERROR and "lowering failed" in result.message


def test_a_symbolic_kernel_builds_an_artifact_of_plain_values(runner, build_config, cpu_target):
    """Symbolic dims reach the artifact as text, so it pickles and a runner binds them."""
    func = get_op("dense").build({"m": ir.Var("m"), "n": 64, "k": 32}, "float32")
    source = ir.build_source(func)
    assert any(not isinstance(d, int) for a in source.args for d in a.shape)
    built = build(BuildInput(cpu_target, kernel=source), build_config)
    assert built.status is Status.OK, built.message
    artifact = built.artifact
    assert {d for a in artifact.args for d in a.shape} == {"m", 64, 32}
    assert artifact.shared_bytes == 0
    assert pickle.loads(pickle.dumps(artifact)) == artifact
    problem = Problem.create("dense", {"m": 24, "n": 64, "k": 32}, "float32")
    result = runner.run(RunInput(artifact, problem, FAST))
    assert result.status is Status.OK, result.message
