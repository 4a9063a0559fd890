"""The CPU runner checks results against numpy, times kernels and survives crashes and hangs."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tunefleet.workers import probe_kernels as pk
from tunefleet.workers.builder import BuildInput, build
from tunefleet.workers.checking import count_mismatches, from_storage, relative_error, to_storage
from tunefleet.workers.cpu_runner import CpuMeasurer, native_loop, python_loop, time_calls
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig

FAST = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=5, min_repeat_ms=0.5, timeout_s=3)
VADD = pk.vector_add_problem(50_000)


@pytest.fixture(scope="module")
def runner(cache_dir):
    with Runner(RunnerConfig(device="cpu", cache_dir=cache_dir)) as r:
        yield r


def _artifact(kernel, target, build_config):
    result = build(BuildInput(target, kernel=kernel), build_config)
    assert result.status is Status.OK, result.message
    return result.artifact


def test_correct_kernels_pass_with_timings(runner, cpu_target, build_config):
    art = _artifact(pk.c_vector_add("correct"), cpu_target, build_config)
    result = runner.run(RunInput(art, VADD, FAST))
    assert result.status is Status.OK, result.message
    assert result.max_rel_err < 1e-6
    assert len(result.timings_ms) == 5 and result.median_ms > 0
    assert result.calls_per_repeat >= 1 and result.input_sets > 1  # small: rotated sets
    matmul = _artifact(pk.c_matmul(), cpu_target, build_config)
    result = runner.run(RunInput(matmul, pk.matmul_problem(33, 47, 65), FAST))
    assert result.status is Status.OK, result.message
    assert result.max_rel_err < 1e-5


@pytest.mark.parametrize("behaviour", ["wrong", "partial"])
def test_wrong_and_unwritten_outputs_are_wrong_result(runner, cpu_target, build_config, behaviour):
    art = _artifact(pk.c_vector_add(behaviour), cpu_target, build_config)
    result = runner.run(RunInput(art, VADD, FAST))
    assert result.status is Status.WRONG_RESULT
    assert result.max_rel_err > 1e-2
    assert result.median_ms is None
    if behaviour == "partial":  # one element never written: the NaN poison catches it
        assert result.message.startswith("1 elements")


def test_hang_then_segfault_then_the_same_runner_measures_correctly(
    runner, cpu_target, build_config
):
    good = _artifact(pk.c_vector_add("correct"), cpu_target, build_config)
    hang = _artifact(pk.c_vector_add("hang"), cpu_target, build_config)
    crash = _artifact(pk.c_vector_add("segfault"), cpu_target, build_config)
    restarts = runner.restarts

    result = runner.run(RunInput(hang, VADD, MeasureConfig(timeout_s=1.0)))
    assert result.status is Status.TIMEOUT and "killed" in result.message
    after = runner.run(RunInput(good, VADD, FAST))
    assert after.status is Status.OK and after.max_rel_err < 1e-6

    result = runner.run(RunInput(crash, VADD, FAST))
    assert result.status is Status.RUN_ERROR and "SIGSEGV" in result.message
    after = runner.run(RunInput(good, VADD, FAST))
    assert after.status is Status.OK and after.max_rel_err < 1e-6
    assert runner.restarts == restarts + 2


def test_a_problem_that_does_not_fit_the_kernel_is_a_run_error(runner, cpu_target, build_config):
    art = _artifact(pk.c_vector_add("correct"), cpu_target, build_config)
    result = runner.run(RunInput(art, pk.matmul_problem(4, 4, 4), FAST))
    assert result.status is Status.RUN_ERROR and "holds 4 elements" in result.message
    other = pk.Problem.create(pk.VADD_OP, {"m": 8}, "float32")
    result = runner.run(RunInput(art, other, FAST))
    assert result.status is Status.RUN_ERROR and "'n' is not a dim" in result.message


def test_each_repeat_lasts_at_least_the_minimum():
    calls = []
    config = MeasureConfig(warmup_ms=1, repeats=4, min_repeat_ms=2.0)

    def call(*args: int) -> None:
        calls.append(args[0])

    timings, number = time_calls(python_loop(call, [(0,), (1,), (2,)]), config)
    assert len(timings) == 4 and number > 1
    assert min(timings) * number >= 1.0  # a repeat is sized to about min_repeat_ms
    assert set(calls) == {0, 1, 2}  # input sets rotate


def test_the_compiled_timing_loop_matches_the_python_one(cpu_target, build_config, cache_dir):
    """The loop compiled into the library runs `count` calls from set `first`, rotating the
    input sets as the Python loop does, on the same buffers; how fast each is belongs to
    bench/measure_overhead.py, not here."""
    art = _artifact(pk.c_vector_add("correct"), cpu_target, build_config)
    measurer = CpuMeasurer(cache_dir)
    inp = RunInput(art, pk.vector_add_problem(1 << 16), FAST)
    data = measurer.data(inp)
    lib = ctypes.CDLL(str(measurer.cache.ensure_file(art.key, ".so", art.binary)))
    native = native_loop(lib, data)
    assert native is not None
    fn = lib.vadd
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64]
    arg_sets = [(*(b.ctypes.data for b in bufs), *data.scalars) for bufs in data.sets]
    slow = python_loop(fn, arg_sets)
    n = len(data.sets)
    assert n >= 4
    first, count = n - 1, 2  # wraps around: the last set, then the first

    def written_by(run) -> list[bool]:
        for k in range(n):
            data.poison_outputs(k)
        assert run(first, count) > 0  # an elapsed time
        return [
            np.array_equal(data.outputs(k)[0], data.sets[k][0] + data.sets[k][1])
            for k in range(n)
        ]

    want = [k in (n - 1, 0) for k in range(n)]
    assert written_by(native) == want
    assert written_by(slow) == want


def test_inputs_are_random_and_never_zero():
    rng = np.random.default_rng(0)
    a, b = pk.VECTOR_ADD.make_inputs({"n": 1000}, "float32", rng)
    assert np.all(a != 0) and np.all(b != 0) and a.std() > 0.1


def test_bfloat16_storage_round_trips_and_keeps_bit_patterns():
    values = np.array([1.0, -2.5, 3.140625, 1e-3], dtype=np.float32)
    bits = to_storage(values, "bfloat16")
    assert bits.dtype == np.uint16
    assert np.allclose(from_storage(bits, "bfloat16"), values, rtol=4e-3)
    assert np.array_equal(to_storage(bits, "bfloat16"), bits)  # bit patterns pass through


def test_relative_error_fails_nan_and_scales_by_the_largest_reference():
    ref = np.array([1000.0, 1e-6, -3.0])
    assert relative_error(ref + np.array([0.0, 1e-3, 0.0]), ref) == pytest.approx(1e-6)
    assert relative_error(np.array([1000.0, np.nan, -3.0]), ref) == float("inf")
    assert count_mismatches(np.array([1000.0, np.nan, -2.0]), ref, 1e-5) == 2


def test_results_name_the_target_the_worker_detected(runner, cpu_target, build_config):
    art = _artifact(pk.c_vector_add("correct"), cpu_target, build_config)
    ok = runner.run(RunInput(art, VADD, FAST))
    assert ok.target_fingerprint == cpu_target.fingerprint
    assert ok.device == cpu_target.device
    hang = runner.run(RunInput(_artifact(pk.c_vector_add("hang"), cpu_target, build_config),
                               VADD, MeasureConfig(timeout_s=1.0)))  # fmt: skip
    assert hang.status is Status.TIMEOUT
    assert hang.target_fingerprint == cpu_target.fingerprint  # from the worker's handshake


def test_a_simulated_worker_reports_the_target_its_config_names(
    cache_dir, cpu_target, build_config
):
    from tunefleet.workers.targets import Target

    other = Target.cpu(cores=64, device="simulated 64-core CPU")
    config = RunnerConfig(device="cpu", cache_dir=cache_dir, simulated_target=other)
    art = _artifact(pk.c_vector_add("correct"), cpu_target, build_config)
    with Runner(config) as sim:
        result = sim.run(RunInput(art, VADD, FAST))
    assert result.ok and result.target_fingerprint == other.fingerprint != cpu_target.fingerprint
    assert result.device == "simulated 64-core CPU"
