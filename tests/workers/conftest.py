"""Shared fixtures for the workers tests: a per-session compile cache and the host CPU target."""

from __future__ import annotations

import pytest

from tunefleet.workers.builder import BuildConfig
from tunefleet.workers.targets import Target, detect_cpu


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("kernel-cache"))


@pytest.fixture(scope="session")
def build_config(cache_dir: str) -> BuildConfig:
    return BuildConfig(cache_dir=cache_dir, timeout_s=60)


@pytest.fixture(scope="session")
def cpu_target() -> Target:
    return detect_cpu()
