"""Both executors build in parallel, measure every candidate and agree with each other."""

from __future__ import annotations

import pytest

from tunefleet.workers import probe_kernels as pk
from tunefleet.workers.builder import BuildInput
from tunefleet.workers.executor import ExecutorError, MeasureInput, create_executor
from tunefleet.workers.results import MeasureConfig, Status

FAST = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=5, min_repeat_ms=0.5, timeout_s=3)
EXPECTED = [
    Status.OK,
    Status.WRONG_RESULT,
    Status.BUILD_ERROR,
    Status.RUN_ERROR,
    Status.TIMEOUT,
    Status.OK,
    Status.OK,
]


def _batch(target) -> list[MeasureInput]:
    vadd = pk.vector_add_problem(40_000)
    kernels = ["correct", "wrong", "compile_error", "segfault", "hang", "correct"]
    batch = [
        MeasureInput(BuildInput(target, kernel=pk.c_vector_add(k)), vadd, FAST) for k in kernels
    ]
    hang = batch[4]
    batch[4] = MeasureInput(hang.build, hang.problem, MeasureConfig(timeout_s=1.0))
    matmul = BuildInput(target, kernel=pk.c_matmul())
    batch.append(MeasureInput(matmul, pk.matmul_problem(40, 30, 50), FAST))
    return batch


@pytest.fixture(scope="module")
def local_results(build_config, cpu_target):
    with create_executor("local", build_config, build_workers=2) as executor:
        return executor.measure_all(_batch(cpu_target))


def test_local_executor_gives_each_candidate_its_status(local_results):
    assert [r.status for r in local_results] == EXPECTED
    ok = [r for r in local_results if r.ok]
    assert all(r.median_ms > 0 and r.max_rel_err < 1e-5 for r in ok)
    assert all(r.build_s > 0 for r in local_results if r.status is not Status.BUILD_ERROR)
    assert "SIGSEGV" in local_results[3].message


def test_unknown_executor_name_is_refused(build_config):
    with pytest.raises(ExecutorError, match="choose one of local, ray"):
        create_executor("slurm", build_config)


def test_local_build_batch_runs_in_parallel_and_dedups_by_cache(build_config, cpu_target):
    inputs = [
        BuildInput(cpu_target, kernel=pk.c_vector_add("correct", 200 + i % 3)) for i in range(6)
    ]
    with create_executor("local", build_config, build_workers=2) as executor:
        results = [f.result() for f in executor.build(inputs)]
    assert all(r.status is Status.OK for r in results)
    assert sum(not r.cache_hit for r in results) == 3  # three distinct sources


@pytest.mark.ray
def test_ray_executor_matches_the_local_one(build_config, cpu_target, local_results):
    with create_executor("ray", build_config, num_cpus=2) as executor:
        results = executor.measure_all(_batch(cpu_target))
    assert [r.status for r in results] == [r.status for r in local_results]
    for ray_result, local in zip(results, local_results, strict=True):
        if local.max_rel_err is not None:  # same seed, same inputs: the same error exactly
            assert ray_result.max_rel_err == pytest.approx(local.max_rel_err, rel=1e-9)
    assert "SIGSEGV" in results[3].message


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_ray_executor_joins_an_existing_cluster(build_config, cpu_target, local_results):
    """`ray start --head` in its own process group, then the executor connects by address."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    import ray

    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="tf-ray-", dir="/tmp")  # short: Ray's socket paths
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # what Ray's own local clusters now use
    head = subprocess.Popen(
        [ray_cli, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    old_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "token"  # the client must speak the head's auth mode
    try:
        deadline = time.monotonic() + 60
        while not Path(temp_dir, "ray_current_cluster").exists():
            assert head.poll() is None, "ray start --head exited"
            assert time.monotonic() < deadline, "the Ray head did not come up in 60 s"
            time.sleep(0.5)
        with create_executor("ray", build_config, address=f"127.0.0.1:{port}") as executor:
            gcs = ray.get_runtime_context().gcs_address
            results = executor.measure_all(_batch(cpu_target))
        assert gcs.endswith(f":{port}")  # joined the head started here, not a new instance
        assert [r.status for r in results] == [r.status for r in local_results]
    finally:
        if old_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_mode
        if ray.is_initialized():
            ray.shutdown()
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)
