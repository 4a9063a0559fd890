"""Helpers of the dashboards tests: the tiny model, fast measurement settings, a free port, and
a real tiny CPU job to fill a database (and, when given, a metrics exporter)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tunefleet.coordinator.jobs import JobConfig, JobOptions, JobResult, start_job
from tunefleet.dashboards.metrics import JobMetrics
from tunefleet.workers import MeasureConfig

MODEL = str(Path(__file__).parents[1] / "coordinator" / "data" / "tiny_llama.json")
FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_tiny_job(
    db_url: str, work: Path, metrics: JobMetrics | None = None, budget: int = 8
) -> JobResult:
    """A real job on the tiny model's decode pass at b=1 on the CPU: `budget` trials in rounds
    of 4 (two tasks get measured), with `metrics` hooked in."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    config = JobConfig(model=MODEL, phases=("decode",), sets={"b": (1,), "m": (16,)},
                       budget=budget, trials_per_round=4)  # fmt: skip
    opts = JobOptions(model_dir=str(work / "models"), cache_dir=str(work / "kernels"),
                      measure_config=FAST, metrics=metrics)  # fmt: skip
    return start_job(config, db_url, opts)
