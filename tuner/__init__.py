"""Search over schedules: design-space rules, search strategies, cost models, task scheduling.

The Python API is `tunefleet.tuner.tune(op, shape, ...)` returning a `TuneResult`; see
docs/tuning.md.
"""

from tunefleet.tuner.cost_model import CostModel, RandomModel, Sample, create_cost_model
from tunefleet.tuner.space import SpaceContext, SpaceGenerator
from tunefleet.tuner.strategy import SearchStrategy, create_strategy
from tunefleet.tuner.tuning import Progress, TuneError, TuneResult, tune

__all__ = [
    "CostModel",
    "Progress",
    "RandomModel",
    "Sample",
    "SearchStrategy",
    "SpaceContext",
    "SpaceGenerator",
    "TuneError",
    "TuneResult",
    "create_cost_model",
    "create_strategy",
    "tune",
]
