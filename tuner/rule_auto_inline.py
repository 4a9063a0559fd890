"""Auto-inline: fold elementwise producers into their consumers (and consumers into producers).

Intermediate spatial blocks become expressions inside their readers, so no buffer round-trip
is left for the other rules to schedule; an output written by a single elementwise consumer of
a spatial producer is folded back into that producer.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import is_reduction, writes_output
from .space import ScheduleRule, SpaceContext, try_fork


class AutoInline(ScheduleRule):
    """compute_inline for spatial intermediates; reverse_compute_inline for spatial outputs."""

    name = "auto_inline"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if is_reduction(sch.func, block):
            return []
        if not writes_output(sch.func, block):
            made = try_fork(sch, lambda t: t.compute_inline(t.get_block(block)))
            return [made] if made is not None else []
        made = try_fork(sch, lambda t: t.reverse_compute_inline(t.get_block(block)))
        return [made] if made is not None else []
