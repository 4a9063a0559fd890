"""Mutators: change one decision of a measured trace (never its instructions).

Tile sizes move a prime factor between two levels of a `sample_perfect_tile` (keeping the
innermost bound); categorical choices (vector widths, unroll and register-tile sizes) pick
another candidate; compute locations move to another loop of the consumer. A mutant is only a
proposal: replay and the postprocessors reject the ones that no longer fit.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence

from tunefleet.ir.trace import Trace

from .registry import load_entry
from .space import SpaceError


class Mutator(ABC):
    """Proposes a trace with one decision changed, or None when it has nothing to change."""

    name = "abstract"

    @abstractmethod
    def mutate(self, trace: Trace, rng: random.Random) -> Trace | None:
        """A mutant of `trace` (decisions only)."""


def _sites(trace: Trace, kind: str) -> list[int]:
    return [i for i in sorted(trace.decisions) if trace.insts[i].kind == kind]


def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


class MutateTileSize(Mutator):
    """Move one prime factor of a tile decision from one level to another."""

    name = "mutate_tile_size"

    def mutate(self, trace: Trace, rng: random.Random) -> Trace | None:
        sites = _sites(trace, "sample_perfect_tile")
        rng.shuffle(sites)
        for idx in sites:
            tiles = [int(x) for x in trace.decisions[idx]]
            if len(tiles) < 2:
                continue
            limit = int(dict(trace.insts[idx].attrs).get("max_innermost_factor", 16))
            sources = [i for i, t in enumerate(tiles) if t > 1]
            if not sources:
                continue
            for _ in range(8):
                src = rng.choice(sources)
                dst = rng.choice([i for i in range(len(tiles)) if i != src])
                p = rng.choice(_prime_factors(tiles[src]))
                new = list(tiles)
                new[src] //= p
                new[dst] *= p
                if new[-1] <= limit:
                    return trace.with_decision(idx, new)
        return None


class MutateCategorical(Mutator):
    """Pick another candidate of a sample_categorical (vector width, tile size, unroll)."""

    name = "mutate_categorical"

    def mutate(self, trace: Trace, rng: random.Random) -> Trace | None:
        sites = [
            i for i in _sites(trace, "sample_categorical") if len(trace.insts[i].inputs[0]) > 1
        ]
        if not sites:
            return None
        idx = rng.choice(sites)
        n = len(trace.insts[idx].inputs[0])
        choices = [c for c in range(n) if c != trace.decisions[idx]]
        return trace.with_decision(idx, rng.choice(choices))


class MutateComputeLocation(Mutator):
    """Move a block computed at a consumer loop to another loop (or back to the root)."""

    name = "mutate_compute_location"

    def __init__(self, max_loops: int = 6) -> None:
        self.max_loops = max_loops

    def mutate(self, trace: Trace, rng: random.Random) -> Trace | None:
        sites = _sites(trace, "sample_compute_location")
        if not sites:
            return None
        idx = rng.choice(sites)
        choices = [c for c in range(-1, self.max_loops) if c != trace.decisions[idx]]
        return trace.with_decision(idx, rng.choice(choices))


_REGISTRY: dict[str, str] = {
    "mutate_tile_size": "tunefleet.tuner.mutators:MutateTileSize",
    "mutate_categorical": "tunefleet.tuner.mutators:MutateCategorical",
    "mutate_compute_location": "tunefleet.tuner.mutators:MutateComputeLocation",
}

DEFAULT_MUTATORS = (
    ("mutate_tile_size", 0.55),
    ("mutate_categorical", 0.35),
    ("mutate_compute_location", 0.10),
)


def create_mutator(name: str) -> Mutator:
    """A mutator by registry name."""
    cls = load_entry(_REGISTRY, name)
    if cls is None:
        raise SpaceError(f"unknown mutator {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return cls()


class MutatorMix:
    """Picks a mutator by probability and retries with others when one has nothing to change."""

    def __init__(self, weighted: Sequence[tuple[str | Mutator, float]] = DEFAULT_MUTATORS) -> None:
        self.mutators = [create_mutator(m) if isinstance(m, str) else m for m, _ in weighted]
        self.weights = [w for _, w in weighted]

    def mutate(self, trace: Trace, rng: random.Random) -> Trace | None:
        order = rng.choices(range(len(self.mutators)), weights=self.weights, k=len(self.mutators))
        for i in dict.fromkeys([*order, *range(len(self.mutators))]):
            mutant = self.mutators[i].mutate(trace, rng)
            if mutant is not None:
                return mutant
        return None
