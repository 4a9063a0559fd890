"""Sampling primitives: they draw a decision from the schedule's RNG (or take the one given,
on replay) and return integer or loop handles for it. Each returns (its result, the decision),
and the trace keeps the decision apart from the instruction so mutators can change it."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .errors import ScheduleError
from .expr import Const
from .instruction_traits import primitive
from .prim_compute_at import compute_at
from .prim_loops import check_races
from .schedule_state import ScheduleState
from .schedule_tree import find_block
from .simplify import simplify
from .stmt import For
from .trace import RV

ROOT_LOCATION = -1  # sample_compute_location decision: keep the block where it is


@primitive(results="list", decision="the factors, outermost first")
def sample_perfect_tile(
    state: ScheduleState,
    loop: RV,
    n: int,
    max_innermost_factor: int = 16,
    decision: Sequence[int] | None = None,
) -> tuple[list[RV], list[int]]:
    """Sample `n` factors whose product is the loop's (constant) extent.

    for i in range(64)        sample_perfect_tile(i, n=2, max_innermost_factor=16) ->
    [v0, v1] holding e.g. 8, 8 (decision [8, 8]); split(i, [v0, v1]) uses them
    """
    lp, _ = state.loop(loop)
    ext = simplify(lp.extent)
    if not isinstance(ext, Const):
        raise ScheduleError(f"sample_perfect_tile needs a constant extent; {lp.var.name} has {ext}")
    extent = int(ext.value)
    if n < 1:
        raise ScheduleError("sample_perfect_tile needs n >= 1")
    if decision is None:
        decision = sample_tile(state.rng, extent, n, max_innermost_factor)
    decision = [int(x) for x in decision]
    product = 1
    for x in decision:
        product *= x
    if len(decision) != n or product != extent or any(x < 1 for x in decision):
        raise ScheduleError(
            f"tile decision {decision} does not split extent {extent} into {n} factors"
        )
    if decision[-1] > max_innermost_factor:
        raise ScheduleError(
            f"innermost factor {decision[-1]} exceeds max_innermost_factor={max_innermost_factor}"
        )
    return [state.new("v", x) for x in decision], list(decision)


@primitive(results="one", decision="the index of the chosen candidate")
def sample_categorical(
    state: ScheduleState,
    candidates: Sequence[int],
    probs: Sequence[float],
    decision: int | None = None,
) -> tuple[RV, int]:
    """Pick one candidate integer with the given probabilities; the decision is its index.

    sample_categorical([0, 16, 64], [0.5, 0.25, 0.25]) -> v0 holding e.g. 16 (decision 1)
    """
    if len(candidates) != len(probs) or not candidates:
        raise ScheduleError(
            "sample_categorical needs as many probabilities as candidates (at least one)"
        )
    if decision is None:
        decision = state.rng.choices(range(len(candidates)), weights=list(probs))[0]
    if not isinstance(decision, int) or not 0 <= decision < len(candidates):
        raise ScheduleError(
            f"categorical decision {decision!r} is not an index into {list(candidates)}"
        )
    return state.new("v", int(candidates[decision])), decision


@primitive(results="one", decision="an index into the consumer's loops, or -1 for the root")
def sample_compute_location(
    state: ScheduleState, block: RV, decision: int | None = None
) -> tuple[RV, int]:
    """Sample a loop of the block's first consumer to compute_at into (-1: stay at the root).

    The decision is an index into that consumer's loops; sampling only picks legal ones.

        B[i] = ...;  for i_0: for i_1: C[...] = B[...]        sample_compute_location(B) ->
        l0 naming i_0 (decision 0), i_1 (1) or the root (-1); compute_at(B, l0) moves B there
    """
    br, _ = state.block(block)
    consumers = state.related(block, producers=False)
    loops: list[For] = []
    if consumers:
        found = find_block(state.func, consumers[0])
        assert found is not None
        loops = list(found[1])
    if decision is None:
        legal = [ROOT_LOCATION]
        legal += [i for i, lp in enumerate(loops) if can_compute_at(state, br.block.name, lp)]
        decision = state.rng.choice(legal)
    if not isinstance(decision, int) or not ROOT_LOCATION <= decision < len(loops):
        raise ScheduleError(
            f"compute-location decision {decision!r} is not -1 or a loop index below {len(loops)}"
        )
    rv = state.new("l", None if decision == ROOT_LOCATION else loops[decision].var.name)
    return rv, decision


def can_compute_at(state: ScheduleState, block_name: str, loop: For) -> bool:
    """Whether compute_at of the block under `loop` succeeds and leaves no race (tried on a
    copy of the state)."""
    trial = state.copy()
    try:
        compute_at(trial, trial.new("b", block_name), trial.new("l", loop.var.name))
        check_races(trial.func)
    except ScheduleError:
        return False
    return True


def sample_tile(rng: random.Random, extent: int, n: int, max_inner: int) -> list[int]:
    """Random factorisation of `extent` into n factors, innermost <= max_inner."""
    divisors = [d for d in range(1, min(extent, max_inner) + 1) if extent % d == 0]
    inner = rng.choice(divisors)
    rest = extent // inner
    factors = []
    for _ in range(n - 2):
        ds = [d for d in range(1, rest + 1) if rest % d == 0]
        f = rng.choice(ds)
        factors.append(f)
        rest //= f
    if n == 1:
        return [extent]
    return [rest, *factors, inner]
