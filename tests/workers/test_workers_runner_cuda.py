"""The CUDA runner on a real GPU: checks, CUDA-event timing and recovery from faults and hangs."""

from __future__ import annotations

import pytest

from tunefleet.workers import probe_kernels as pk
from tunefleet.workers.builder import BuildInput, build
from tunefleet.workers.executor import MeasureInput, create_executor
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import resolve_target

pytestmark = pytest.mark.gpu

FAST = MeasureConfig(guard_noise=False, warmup_ms=2, repeats=10, min_repeat_ms=0.5, timeout_s=10)
VADD = pk.vector_add_problem(1 << 22)


@pytest.fixture(scope="module")
def gpu_target():
    return resolve_target("cuda")


@pytest.fixture(scope="module")
def gpu_runner(cache_dir):
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache_dir)) as runner:
        yield runner


def _artifact(kernel, target, build_config):
    result = build(BuildInput(target, kernel=kernel), build_config)
    assert result.status is Status.OK, result.message
    return result.artifact


def test_cuda_target_is_fingerprinted(gpu_target):
    details = gpu_target.detail_values
    assert gpu_target.arch.startswith("sm_") and details["sm_count"] > 0
    assert details["memory_bytes"] > 1 << 30 and details["nvcc"]
    assert gpu_target.fingerprint == resolve_target("cuda").fingerprint


def test_correct_wrong_fault_hang_then_correct_on_one_runner(gpu_runner, gpu_target, build_config):
    good = _artifact(pk.cuda_vector_add("correct"), gpu_target, build_config)
    result = gpu_runner.run(RunInput(good, VADD, FAST))
    assert result.status is Status.OK, result.message
    assert result.max_rel_err < 1e-6 and result.median_ms > 0
    first_ms = result.median_ms

    wrong = _artifact(pk.cuda_vector_add("wrong"), gpu_target, build_config)
    result = gpu_runner.run(RunInput(wrong, VADD, FAST))
    assert result.status is Status.WRONG_RESULT and result.max_rel_err > 1e-2

    partial = _artifact(pk.cuda_vector_add("partial"), gpu_target, build_config)
    result = gpu_runner.run(RunInput(partial, VADD, FAST))  # the device-side NaN poison
    assert result.status is Status.WRONG_RESULT and result.message.startswith("1 elements")

    oob = _artifact(pk.cuda_vector_add("oob_write"), gpu_target, build_config)
    result = gpu_runner.run(RunInput(oob, VADD, FAST))
    assert result.status is Status.RUN_ERROR
    assert "illegal" in result.message.lower() or "CUDA" in result.message

    after = gpu_runner.run(RunInput(good, VADD, FAST))
    assert after.status is Status.OK and after.max_rel_err < 1e-6

    hang = _artifact(pk.cuda_vector_add("hang"), gpu_target, build_config)
    result = gpu_runner.run(RunInput(hang, VADD, MeasureConfig(timeout_s=3)))
    assert result.status is Status.TIMEOUT

    after = gpu_runner.run(RunInput(good, VADD, FAST))
    assert after.status is Status.OK and after.max_rel_err < 1e-6
    assert after.median_ms == pytest.approx(first_ms, rel=0.5)  # a fresh context times the same


def test_cuda_matmul_and_l2_flush(gpu_runner, gpu_target, build_config):
    art = _artifact(pk.cuda_matmul(), gpu_target, build_config)
    problem = pk.matmul_problem(256, 192, 320)
    result = gpu_runner.run(RunInput(art, problem, FAST))
    assert result.status is Status.OK, result.message
    assert result.max_rel_err < 1e-5
    flushed = gpu_runner.run(RunInput(art, problem, MeasureConfig(flush_l2=True, repeats=5)))
    assert flushed.status is Status.OK and flushed.calls_per_repeat == 1


def test_local_executor_measures_cuda_candidates(build_config, gpu_target):
    batch = [
        MeasureInput(BuildInput(gpu_target, kernel=pk.cuda_vector_add(b)), VADD, FAST)
        for b in ("correct", "compile_error", "oob_write", "correct")
    ]
    with create_executor("local", build_config) as executor:
        statuses = [r.status for r in executor.measure_all(batch)]
    assert statuses == [Status.OK, Status.BUILD_ERROR, Status.RUN_ERROR, Status.OK]


@pytest.mark.ray
def test_ray_gpu_actor_matches_local(build_config, gpu_target):
    batch = [
        MeasureInput(BuildInput(gpu_target, kernel=pk.cuda_vector_add(b)), VADD, FAST)
        for b in ("correct", "wrong", "oob_write", "correct")
    ]
    with create_executor("local", build_config) as executor:
        local = executor.measure_all(batch)
    with create_executor("ray", build_config, num_cpus=4) as executor:
        remote = executor.measure_all(batch)
    assert [r.status for r in remote] == [r.status for r in local]
    assert [r.status for r in remote] == [
        Status.OK,
        Status.WRONG_RESULT,
        Status.RUN_ERROR,
        Status.OK,
    ]
    assert remote[1].max_rel_err == pytest.approx(local[1].max_rel_err, rel=1e-9)
