"""Shared fixtures for the tuner tests: one compile cache and one local executor per session."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tunefleet.ir import build_source
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.replay import replay
from tunefleet.workers import BuildConfig, Executor, Target, create_executor, resolve_target


@pytest.fixture(scope="session")
def cpu() -> Target:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return resolve_target("cpu")


@pytest.fixture(scope="session")
def executor(tmp_path_factory: pytest.TempPathFactory, cpu: Target) -> Iterator[Executor]:
    cache = tmp_path_factory.mktemp("tuner-kernels")
    with create_executor("local", BuildConfig(cache_dir=str(cache), timeout_s=60)) as ex:
        yield ex


@pytest.fixture
def nvcc_compiles(tmp_path: Path) -> Callable[..., None]:
    """Compile one sampled candidate of a CUDA space to a cubin (sm_80 unless `arch` says)
    with nvcc (or fail)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")

    def check(sampler: SpaceSampler, seed: int = 1, arch: str = "sm_80") -> None:
        cand = sampler.sample_unique(random.Random(seed), 1, set())[0]
        sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
        src = tmp_path / "k.cu"
        src.write_text(build_source(sch, "cuda").source)
        cmd = ["nvcc", "-cubin", f"-arch={arch}", "-O3", "-o", str(tmp_path / "k.cubin"), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]

    return check
