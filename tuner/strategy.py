"""Search strategies: `generate(n)` proposes unmeasured candidates, `notify` hears results.

Chosen by name (`create_strategy("evolutionary")`) or passed as an instance. A strategy never
proposes a trace whose hash is in `measured` (filled from the database before the search and
after every batch), so a trace is measured once per (workload, target).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from tunefleet.ir.trace import Trace

from .candidates import Candidate, SpaceSampler
from .cost_model import CostModel
from .registry import load_entry


class StrategyError(ValueError):
    """Unknown strategy name."""


class SearchStrategy(ABC):
    """Proposes batches of candidates for one workload."""

    name = "abstract"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    @abstractmethod
    def generate(
        self, sampler: SpaceSampler, model: CostModel, measured: set[str], n: int
    ) -> list[Candidate]:
        """Up to n new candidates (none of them in `measured`)."""

    def notify(self, measured_top: Sequence[tuple[float, Trace]]) -> None:  # noqa: B027
        """The fastest measured traces so far (time, trace), best first."""


_REGISTRY: dict[str, str] = {
    "random": "tunefleet.tuner.search_random:RandomSearch",
    "evolutionary": "tunefleet.tuner.search_evolutionary:EvolutionarySearch",
}


def create_strategy(name: str, seed: int = 0, **options: Any) -> SearchStrategy:
    """A strategy by name ("evolutionary" or "random")."""
    cls = load_entry(_REGISTRY, name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise StrategyError(f"unknown strategy {name!r}; choose one of {known}")
    return cls(seed=seed, **options)
