"""Random search: replay each sketch with freshly drawn decisions (the baseline to beat)."""

from __future__ import annotations

import random

from .candidates import Candidate, SpaceSampler
from .cost_model import CostModel
from .strategy import SearchStrategy


class RandomSearch(SearchStrategy):
    """Uniform over sketches and decisions; ignores the cost model."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self._rng = random.Random(seed)

    def generate(
        self, sampler: SpaceSampler, model: CostModel, measured: set[str], n: int
    ) -> list[Candidate]:
        return sampler.sample_unique(self._rng, n, measured)
