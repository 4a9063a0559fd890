"""Auto-unroll: sample how far each loop nest is unrolled (MetaSchedule's unroll decision).

Each top-level nest gets a `sample_categorical` over the maximum steps (0, 16, 64, 512) and an
`auto_unroll_max_step` annotation on its outermost loop; lowering then unrolls every serial
loop whose nest runs at most that many statements (see ir's `auto_unroll`). 0 leaves the
nest as the other rules made it. The decision never changes the loop structure, so it
replays and mutates like any categorical.
"""

from __future__ import annotations

from tunefleet.ir.annotation_keys import AUTO_UNROLL
from tunefleet.ir.schedule import Schedule

from .block_info import nest_blocks, uniform
from .space import GlobalRule, SpaceContext

MAX_STEPS = (0, 16, 64, 512)


class AutoUnroll(GlobalRule):
    """Annotate every nest's outermost loop with a sampled auto-unroll limit (CPU only)."""

    name = "auto_unroll"

    def __init__(self, max_steps: tuple[int, ...] = MAX_STEPS) -> None:
        self.max_steps = max_steps

    def apply(self, sch: Schedule, ctx: SpaceContext) -> Schedule:
        out = sch.copy()
        if not ctx.is_cpu:
            return out
        for name in nest_blocks(out.func):
            top = out.get_loops(out.get_block(name))[0]
            step = out.sample_categorical(self.max_steps, uniform(len(self.max_steps)))
            out.annotate(top, AUTO_UNROLL, step)
        return out
