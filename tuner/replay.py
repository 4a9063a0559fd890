"""Replaying a trace with a seeded random source, so that fresh decisions are reproducible.

The tuner draws new decisions for a design-space trace deterministically from a seed, and
replays mutated decisions: `Trace.apply(..., seed=, redraw=True)` does both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunefleet.ir.schedule import Schedule
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import Trace


def replay(
    func: PrimFunc,
    trace: Trace,
    seed: int | None = None,
    decisions: Mapping[int, Any] | None = None,
) -> Schedule:
    """Replay `trace` on `func`; sampling steps use `decisions` where given, else draw anew.

    Raises ScheduleError when an instruction (or a given decision) is invalid.
    """
    return trace.apply(func, decisions, seed=seed, redraw=True)


STRUCTURAL_KINDS = ("sample_compute_location",)


def resample(func: PrimFunc, trace: Trace, seed: int) -> Schedule:
    """A fresh point of the design space `trace` describes, drawn from `seed`.

    Tile sizes and categorical choices are drawn anew; compute locations are kept, because
    the instructions recorded after them depend on where the block went (they change only by
    mutation, and replay rejects the mutants that no longer fit).
    """
    kept = {i: d for i, d in trace.decisions.items() if trace.insts[i].kind in STRUCTURAL_KINDS}
    return replay(func, Trace(trace.insts, {}), seed=seed, decisions=kept)
