"""Query primitives: handles to blocks, their loops, producers and consumers.

They change nothing but are recorded, so a replayed trace gets the same handles.
"""

from __future__ import annotations

from .errors import ScheduleError
from .instruction_traits import primitive
from .schedule_state import ScheduleState
from .schedule_tree import blocks, find_block
from .trace import RV


@primitive(results="one")
def get_block(state: ScheduleState, name: str) -> RV:
    """The block called `name`.

    with block("C"): ...        get_block("C") -> b0
    """
    if find_block(state.func, name) is None:
        known = ", ".join(br.block.name for br, _ in blocks(state.func))
        raise ScheduleError(f"no block named {name!r}; blocks: {known}")
    return state.new("b", name)


@primitive(results="list")
def get_loops(state: ScheduleState, block: RV) -> list[RV]:
    """The loops above `block`, outermost first.

    for i in range(64): for j in range(64): C[i, j] = ...        get_loops(C) -> [i, j]
    """
    _, loops = state.block(block)
    return [state.new("l", lp.var.name) for lp in loops]


@primitive(results="list")
def get_producers(state: ScheduleState, block: RV) -> list[RV]:
    """Blocks that write a buffer `block` reads.

    B[i] = A[i] + 1;  C[i] = B[i] * 2        get_producers(C) -> [B]
    """
    return [state.new("b", n) for n in state.related(block, producers=True)]


@primitive(results="list")
def get_consumers(state: ScheduleState, block: RV) -> list[RV]:
    """Blocks that read a buffer `block` writes.

    B[i] = A[i] + 1;  C[i] = B[i] * 2        get_consumers(B) -> [C]
    """
    return [state.new("b", n) for n in state.related(block, producers=False)]
