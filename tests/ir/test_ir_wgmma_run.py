"""The wgmma dense from the IR against numpy on a Hopper GPU, through the workers' runner."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunefleet.ir import build_source
from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import resolve_target

pytestmark = pytest.mark.gpu

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

FAST = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=30)


@pytest.fixture(scope="module")
def hopper(tmp_path_factory):
    target = resolve_target("cuda")
    if target.arch != "sm_90":
        pytest.skip(f"wgmma needs an sm_90 GPU, this one is {target.arch}")
    cache = str(tmp_path_factory.mktemp("wgmma-kernels"))
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        yield target, runner, BuildConfig(cache_dir=cache, timeout_s=120)


@pytest.mark.parametrize(
    ("dtype", "warpgroups", "tile_n", "stages", "shape"),
    [
        ("float16", 1, 64, 2, (64, 64, 64)),
        ("float16", 1, 128, 2, (128, 256, 192)),
        ("float16", 2, 256, 3, (256, 512, 320)),
        ("bfloat16", 2, 128, 4, (256, 256, 512)),
        ("float16", 2, 256, 4, (512, 1024, 1024)),
    ],
)
def test_wgmma_dense_matches_numpy(hopper, dtype, warpgroups, tile_n, stages, shape) -> None:
    from dense_wgmma_cuda import dense_wgmma_schedule

    target, runner, config = hopper
    m, n, k = shape
    sch = dense_wgmma_schedule(m, n, k, dtype, warpgroups, tile_n, stages)
    built = build(BuildInput(target, kernel=build_source(sch, "cuda")), config)
    assert built.status is Status.OK, built.message
    problem = Problem.create("dense", {"m": m, "n": n, "k": k}, dtype)
    result = runner.run(RunInput(built.artifact, problem, FAST))
    assert result.status is Status.OK, result.message
