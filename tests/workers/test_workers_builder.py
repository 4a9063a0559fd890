"""The builder compiles C and CUDA sources once, reports compiler logs and enforces timeouts."""

from __future__ import annotations

import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from tunefleet.workers import probe_kernels as pk
from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.results import Status
from tunefleet.workers.targets import Target

ELF_MAGIC = b"\x7fELF"
SM90 = Target(kind="cuda", device="NVIDIA H100 80GB HBM3", arch="sm_90")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")


def test_c_kernel_builds_to_a_shared_library_and_is_cached(build_config, cpu_target):
    kernel = pk.c_vector_add("correct", variant=101)
    first = build(BuildInput(cpu_target, kernel=kernel), build_config)
    assert first.status is Status.OK and not first.cache_hit
    assert first.artifact is not None and first.artifact.binary.startswith(ELF_MAGIC)
    again = build(BuildInput(cpu_target, kernel=kernel), build_config)
    assert again.cache_hit and again.artifact.binary == first.artifact.binary
    assert again.artifact.key == first.artifact.key
    other = build(BuildInput(cpu_target, kernel=pk.c_vector_add("correct", 102)), build_config)
    assert not other.cache_hit and other.artifact.key != first.artifact.key


def test_flags_are_part_of_the_cache_key(build_config, cpu_target):
    kernel = pk.c_vector_add("correct", variant=103)
    o3 = build(BuildInput(cpu_target, kernel=kernel), build_config)
    o2 = build(BuildInput(cpu_target, kernel=kernel), replace(build_config, cflags=(
        "-O2", "-fopenmp", "-fPIC", "-shared")))  # fmt: skip
    assert o2.status is Status.OK and not o2.cache_hit
    assert o2.artifact.key != o3.artifact.key


def test_identical_sources_compile_once_when_built_concurrently(build_config, cpu_target):
    inp = BuildInput(cpu_target, kernel=pk.c_vector_add("correct", variant=104))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: build(inp, build_config), range(4)))
    assert all(r.status is Status.OK for r in results)
    assert sum(not r.cache_hit for r in results) == 1


def test_compile_error_returns_the_compiler_log(build_config, cpu_target):
    result = build(BuildInput(cpu_target, kernel=pk.c_vector_add("compile_error")), build_config)
    assert result.status is Status.BUILD_ERROR and result.artifact is None
    assert "error" in result.message and "expected expression" in result.message


def test_a_compiler_that_hangs_is_killed_at_the_timeout(tmp_path: Path, cpu_target):
    fake = tmp_path / "slowcc"
    fake.write_text('#!/bin/sh\n[ "$1" = --version ] && echo "slowcc 1.0" && exit 0\nsleep 30\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    config = BuildConfig(cache_dir=str(tmp_path / "cache"), timeout_s=0.5, cc=str(fake))
    result = build(BuildInput(cpu_target, kernel=pk.c_vector_add("correct", 105)), config)
    assert result.status is Status.TIMEOUT
    assert result.build_s < 10 and "0.5s" in result.message


def test_kernel_language_must_match_the_target(build_config, cpu_target):
    result = build(BuildInput(cpu_target, kernel=pk.cuda_vector_add()), build_config)
    assert result.status is Status.BUILD_ERROR and "cannot be built" in result.message


def test_a_build_input_without_source_or_workload_is_a_build_error(build_config, cpu_target):
    result = build(BuildInput(cpu_target), build_config)
    assert result.status is Status.BUILD_ERROR and "lowering failed" in result.message


@needs_nvcc
def test_cuda_kernel_builds_to_a_cubin_for_the_target_arch(build_config):
    result = build(BuildInput(SM90, kernel=pk.cuda_vector_add("correct", 106)), build_config)
    assert result.status is Status.OK, result.message
    assert result.artifact.binary.startswith(ELF_MAGIC)
    assert result.artifact.grid == ("ceildiv(n, 256)", 1, 1)
    broken = build(BuildInput(SM90, kernel=pk.cuda_vector_add("compile_error")), build_config)
    assert broken.status is Status.BUILD_ERROR and "error" in broken.message
