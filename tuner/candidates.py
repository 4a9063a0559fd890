"""Candidates and the sampler that makes them: a point of the design space, validated.

A candidate is a complete trace (instructions plus decisions), its hash (the database's
de-duplication key), its sketch and its features. `SpaceSampler` draws fresh points of a
sketch, replays mutated traces, runs the postprocessors and caches features by trace hash.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tunefleet.ir.errors import IRError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import Trace, trace_hash

from .features import extract
from .postproc import Postproc, first_rejection
from .replay import replay, resample
from .space import Sketch, SpaceContext


@dataclass(frozen=True)
class Candidate:
    """A valid, complete schedule of the workload ready to measure."""

    trace: Trace
    trace_hash: str
    sketch: int
    features: np.ndarray = field(repr=False, compare=False)

    @property
    def trace_json(self) -> str:
        return self.trace.to_json()


class SpaceSampler:
    """Draws, replays and validates candidates of one workload's sketches."""

    def __init__(
        self,
        func: PrimFunc,
        sketches: Sequence[Sketch],
        ctx: SpaceContext,
        postprocs: Sequence[Postproc],
    ) -> None:
        self.func = func
        self.sketches = list(sketches)
        self.ctx = ctx
        self.postprocs = list(postprocs)
        self._features: dict[str, np.ndarray] = {}
        self._known: dict[str, Candidate] = {}
        self.rejected = 0

    def sample(self, rng: random.Random) -> Candidate | None:
        """A fresh random point of a random sketch, or None if it is invalid."""
        index = rng.randrange(len(self.sketches))
        seed = rng.getrandbits(32)
        try:
            sch = resample(self.func, self.sketches[index].trace, seed)
        except IRError:
            self.rejected += 1
            return None
        return self._finish(sch.trace, index, sch)

    def from_trace(self, trace: Trace, sketch: int = -1) -> Candidate | None:
        """Replay a complete trace (a mutant or a stored record); None if it is invalid."""
        key = trace_hash(trace)
        if key in self._known:
            return self._known[key]
        try:
            sch = replay(self.func, trace, decisions=trace.decisions)
        except IRError:
            self.rejected += 1
            return None
        return self._finish(sch.trace, sketch, sch)

    def _finish(self, trace: Trace, sketch: int, sch: Schedule) -> Candidate | None:
        key = trace_hash(trace)
        feats = self._features.get(key)
        if feats is None:
            try:
                if first_rejection(sch, self.ctx, self.postprocs) is not None:
                    self.rejected += 1
                    return None
                feats = extract(sch.func)
            except IRError:
                self.rejected += 1
                return None
            self._features[key] = feats
        cand = Candidate(trace, key, sketch, feats)
        self._known[key] = cand
        return cand

    def sample_unique(
        self, rng: random.Random, n: int, exclude: set[str], max_tries: int | None = None
    ) -> list[Candidate]:
        """Up to n valid candidates whose hashes are not in `exclude` (nor repeated)."""
        out: list[Candidate] = []
        seen = set(exclude)
        tries = max_tries if max_tries is not None else 8 * n + 16
        for _ in range(tries):
            if len(out) >= n:
                break
            cand = self.sample(rng)
            if cand is not None and cand.trace_hash not in seen:
                seen.add(cand.trace_hash)
                out.append(cand)
        return out
