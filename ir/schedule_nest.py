"""Reading a schedule's loop nest, a register copy of an operand and a register sum's init:
the steps the default GPU schedules (`default_schedule_cuda`, `default_key_tiles`) share."""

from __future__ import annotations

from .schedule import RV, Schedule
from .schedule_tree import find_block, read_only_buffers, reduce_loop_vars


def loops_below(sch: Schedule, block: RV, loop: RV) -> list[RV]:
    """The loops of `block` inside `loop`."""
    loops = sch.get_loops(block)
    at = [i for i, lp in enumerate(loops) if sch.get(lp).var is sch.get(loop).var]
    return loops[at[0] + 1 :]


def reduction_vars(sch: Schedule, name: str) -> set:
    """The loop variables driving block `name`'s reductions."""
    found = find_block(sch.mod, name)
    return reduce_loop_vars(found[0]) if found else set()


def operand_copy(sch: Schedule, block: RV, buffer: str, scope: str = "local") -> RV | None:
    """A copy of input `buffer` that `block` reads, in registers (or `scope`): cache_read
    before the block is moved, the caller places it with compute_at; None where the block
    does not read it."""
    found = find_block(sch.mod, sch.get(block).name)
    reads = read_only_buffers(found[0].block) if found else []
    index = next((i for i, b in enumerate(reads) if b.name == buffer), None)
    return None if index is None else sch.cache_read(block, index, scope)


def init_before(sch: Schedule, block: RV, loop: RV) -> RV:
    """Zero a register reduction's slots once before its `loop` (the init's loops unrolled,
    so the slots stay registers), where the update tested for its first step at every step;
    returns the init block.

        for k: if k == 0: acc[c] = 0;  acc[c] += x[k, c]   ->
        acc[c] = 0 (c unrolled);  for k: acc[c] += x[k, c]
    """
    outer = [sch.get(lp).var for lp in sch.get_loops(block)].index(sch.get(loop).var)
    init = sch.decompose_reduction(block, loop)
    for lp in sch.get_loops(init)[outer:]:
        if sch.get(lp).kind != "thread_binding":  # the threads' loops stay theirs
            sch.unroll(lp)
    return init
