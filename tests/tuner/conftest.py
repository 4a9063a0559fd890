"""Shared fixtures for the tuner tests: one compile cache and one local executor per session."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
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
