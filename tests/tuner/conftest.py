"""Shared fixtures for the tuner tests: one compile cache and one local executor per session."""

from __future__ import annotations

import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tunefleet.ir import build_source
from tunefleet.tuner.candidates import Candidate, SpaceSampler
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


def _one_per_sketch(sampler: SpaceSampler, seed: int = 0) -> list[Candidate]:
    """A sampled candidate of every sketch of the space, in sketch order."""
    found: dict[int, Candidate] = {}
    rng = random.Random(seed)
    for _ in range(20):
        for cand in sampler.sample_unique(rng, 8, set()):
            found.setdefault(cand.sketch, cand)
        if len(found) == len(sampler.sketches):
            break
    assert len(found) == len(sampler.sketches), "a sketch gave no valid candidate"
    return [found[k] for k in sorted(found)]


@pytest.fixture
def one_per_sketch() -> Callable[..., list[Candidate]]:
    """`(sampler, seed=0)` -> a sampled candidate of every sketch of the space."""
    return _one_per_sketch


@pytest.fixture
def nvcc_compiles(tmp_path: Path) -> Callable[..., None]:
    """Compile one sampled candidate of a CUDA space (or, with `every_sketch`, one of each
    sketch) to a cubin (sm_80 unless `arch` says) with nvcc (or fail)."""
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")

    def check(
        sampler: SpaceSampler, seed: int = 1, arch: str = "sm_80", every_sketch: bool = False
    ) -> None:
        if every_sketch:
            cands = _one_per_sketch(sampler, seed)
        else:
            cands = sampler.sample_unique(random.Random(seed), 1, set())[:1]
        for cand in cands:
            sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
            src = tmp_path / "k.cu"
            src.write_text(build_source(sch, "cuda").source)
            out = str(tmp_path / "k.cubin")
            cmd = ["nvcc", "-cubin", f"-arch={arch}", "-O3", "-o", out, str(src)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            assert proc.returncode == 0, proc.stderr[-2000:]

    return check


@pytest.fixture(scope="module")
def every_sketch_runs_on_gpu(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., None]]:
    """Build one candidate of every sketch of a CUDA space and run it on the GPU with the
    workers' runner, which checks its output against numpy (or fail)."""
    from tunefleet.workers.builder import BuildInput, build
    from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status
    from tunefleet.workers.runner import Runner, RunnerConfig

    cache = str(tmp_path_factory.mktemp("gpu-kernels"))
    config = BuildConfig(cache_dir=cache, timeout_s=120)
    fast = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=20)
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        target = resolve_target("cuda")

        def check(sampler: SpaceSampler, problem: Problem, seed: int = 3) -> None:
            for cand in _one_per_sketch(sampler, seed):
                built = build(
                    BuildInput(target, workload=sampler.func, trace=cand.trace_json), config
                )
                assert built.status is Status.OK, built.message
                result = runner.run(RunInput(built.artifact, problem, fast))
                assert result.status is Status.OK, f"{result.message}\n{cand.trace.as_python()}"

        yield check


@pytest.fixture
def every_sketch_interprets() -> Callable[..., None]:
    """Run one candidate of every sketch of a CUDA space in ir's GPU interpreter (each
    thread a numpy lane, no GPU needed) on the problem's inputs and compare the outputs with
    its numpy reference at the runner's tolerance (or fail); returns how many sketches ran."""
    import numpy as np

    from tunefleet.ir.gpu_interpreter import interpret
    from tunefleet.workers.checking import compare_outputs, default_tolerance
    from tunefleet.workers.inputs import resolve_op

    def check(sampler: SpaceSampler, problem: Any, seed: int = 3) -> int:
        op = resolve_op(problem.op)
        dims, attrs = problem.dim_values, problem.attr_values
        inputs = list(op.make_inputs(dims, problem.dtype, np.random.default_rng(0), **attrs))
        ref = op.reference(*inputs, **attrs)
        refs = list(ref) if isinstance(ref, list | tuple) else [ref]
        out_dtypes = [b.dtype for b in sampler.func.params[sampler.func.num_inputs :]]
        ran = 0
        for cand in _one_per_sketch(sampler, seed):
            sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
            outs = interpret(sch.mod, inputs, dims)
            err, bad = compare_outputs(outs, out_dtypes, refs, default_tolerance(problem.dtype))
            assert bad == 0, f"{bad} wrong, error {err:.3g}\n{cand.trace.as_python()}"
            ran += 1
        return ran

    return check
