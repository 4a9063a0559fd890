"""Builders and runners that compile and time candidate kernels, locally or on Ray.

The interfaces other packages use are re-exported here; see docs/workers.md.
"""

from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.executor import Executor, ExecutorError, MeasureInput, create_executor
from tunefleet.workers.results import (
    Artifact,
    BuildResult,
    MeasureConfig,
    MeasureResult,
    Problem,
    RunInput,
    Status,
)
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import Target, detect_targets, resolve_target

__all__ = [
    "Artifact",
    "BuildConfig",
    "BuildInput",
    "BuildResult",
    "Executor",
    "ExecutorError",
    "MeasureConfig",
    "MeasureInput",
    "MeasureResult",
    "Problem",
    "RunInput",
    "Runner",
    "RunnerConfig",
    "Status",
    "Target",
    "build",
    "create_executor",
    "detect_targets",
    "resolve_target",
]
