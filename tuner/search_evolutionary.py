"""Evolutionary search guided by the cost model (MetaSchedule's EvolutionarySearch).

Each batch: a population of the measured top traces (`init_measured_ratio`) plus fresh
samples; `genetic_num_iters` generations in which parents are drawn in proportion to their
predicted score and mutated with probability `genetic_mutate_prob` (a mutant that replay or
the postprocessors reject is retried up to `genetic_max_fail_count` times); every unmeasured
candidate seen is kept with its score, and the batch is the best-scored ones, with an
`eps_greedy` share of random samples for exploration.

MetaSchedule's published defaults are population 2048, measured ratio 0.2, at least 50
unmeasured, 4 generations, mutation probability 0.85, 10 failures and epsilon 0.05. Replaying
a trace (every primitive re-checks the program for races) and extracting features takes
20-130 ms in Python here, not ~0.1 ms as in C++, so the population is 64 with 3 generations
(about 200 replays per batch of 16); measured ratio, mutation probability and epsilon keep
their values. Until the model is trained the batch is random samples (what the random model
would rank anyway), which saves the generations' cost.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from tunefleet.ir.trace import Trace

from .candidates import Candidate, SpaceSampler
from .cost_model import CostModel
from .mutators import MutatorMix
from .strategy import SearchStrategy


class EvolutionarySearch(SearchStrategy):
    """Population, measured-top seeding, score-proportional selection, mutation, eps-greedy."""

    name = "evolutionary"

    def __init__(
        self,
        seed: int = 0,
        population_size: int = 64,
        init_measured_ratio: float = 0.2,
        genetic_num_iters: int = 3,
        genetic_mutate_prob: float = 0.85,
        genetic_max_fail_count: int = 10,
        eps_greedy: float = 0.05,
        mutators: MutatorMix | None = None,
    ) -> None:
        super().__init__(seed)
        self.population_size = population_size
        self.init_measured_ratio = init_measured_ratio
        self.genetic_num_iters = genetic_num_iters
        self.genetic_mutate_prob = genetic_mutate_prob
        self.genetic_max_fail_count = genetic_max_fail_count
        self.eps_greedy = eps_greedy
        self.mutators = mutators or MutatorMix()
        self._rng = random.Random(seed)
        self._top: list[tuple[float, Trace]] = []

    def notify(self, measured_top: Sequence[tuple[float, Trace]]) -> None:
        self._top = list(measured_top)

    def generate(
        self, sampler: SpaceSampler, model: CostModel, measured: set[str], n: int
    ) -> list[Candidate]:
        rng = self._rng
        if not model.trained:
            return sampler.sample_unique(rng, n, measured)
        population: list[Candidate] = []
        for _, trace in self._top[: int(self.population_size * self.init_measured_ratio)]:
            cand = sampler.from_trace(trace)
            if cand is not None:
                population.append(cand)
        population += sampler.sample_unique(
            rng, self.population_size - len(population), {c.trace_hash for c in population}
        )
        best: dict[str, tuple[float, Candidate]] = {}
        for _ in range(self.genetic_num_iters):
            if not population:
                break
            scores = self._score(model, population)
            for cand, score in zip(population, scores, strict=True):
                if cand.trace_hash not in measured:
                    best[cand.trace_hash] = (float(score), cand)
            population = self._next_generation(sampler, population, scores)
        if population:
            for cand, score in zip(population, self._score(model, population), strict=True):
                if cand.trace_hash not in measured:
                    best[cand.trace_hash] = (float(score), cand)
        n_random = round(n * self.eps_greedy)
        ranked = sorted(best.values(), key=lambda p: (-p[0], p[1].trace_hash))
        picked = [c for _, c in ranked[: n - n_random]]
        taken = measured | {c.trace_hash for c in picked}
        picked += sampler.sample_unique(rng, n - len(picked), taken)
        return picked

    @staticmethod
    def _score(model: CostModel, population: list[Candidate]) -> np.ndarray:
        return np.asarray(model.predict(np.stack([c.features for c in population])), dtype=float)

    def _next_generation(
        self, sampler: SpaceSampler, population: list[Candidate], scores: np.ndarray
    ) -> list[Candidate]:
        rng = self._rng
        weights = np.clip(scores, 1e-6, None)
        weights = list(weights / weights.sum())
        children: dict[str, Candidate] = {}
        for _ in range(len(population)):
            parent = rng.choices(population, weights=weights)[0]
            child: Candidate | None = parent
            if rng.random() < self.genetic_mutate_prob:
                child = None
                for _ in range(self.genetic_max_fail_count):
                    mutant = self.mutators.mutate(parent.trace, rng)
                    if mutant is None:
                        break
                    child = sampler.from_trace(mutant, parent.sketch)
                    if child is not None:
                        break
                child = child or parent
            children.setdefault(child.trace_hash, child)
        return list(children.values())
