"""Fixtures of the coordinator tests: the CPU target and a local executor (one per module, so a
module may close it). The throwaway redis-server to kill (`own_redis`) is in tests/conftest.py."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tunefleet.workers import BuildConfig, Executor, Target, create_executor, resolve_target


@pytest.fixture(scope="module")
def cpu() -> Target:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return resolve_target("cpu")


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, cpu: Target) -> Iterator[Executor]:
    cache = tmp_path_factory.mktemp("coordinator-kernels")
    with create_executor("local", BuildConfig(cache_dir=str(cache), timeout_s=60)) as ex:
        yield ex
