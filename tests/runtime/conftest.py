"""One kernel cache shared by the runtime tests, so equal kernels compile once per session,
and the random weights of each tiny family."""

from __future__ import annotations

import pytest
from runtime_models import HF_CONFIGS, tiny

from tunefleet.runtime.weights import Weights, random_weights
from tunefleet.workers.builder import BuildConfig


@pytest.fixture(scope="session")
def build_config(tmp_path_factory: pytest.TempPathFactory) -> BuildConfig:
    return BuildConfig(cache_dir=str(tmp_path_factory.mktemp("runtime-kernels")), timeout_s=120)


@pytest.fixture(scope="session")
def family_weights() -> dict[str, Weights]:
    return {f: random_weights(tiny(f), seed=3) for f in HF_CONFIGS}
