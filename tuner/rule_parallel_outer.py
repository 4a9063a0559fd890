"""Parallel outer loops: run each top-level loop nest's outermost loop across the cores.

Loops of extent 1 at the top (the row loop of a decode GEMV, m=1) are passed over, so the
first loop with work to share is the parallel one; a unit loop cannot always be fused (a
block computed at a deeper loop does not depend on it), and left alone it would make the
whole nest serial. When that loop is too short to feed every core, it is first fused with
the loop directly below it. Refused steps (a reduction loop, a loop that is not perfectly
nested) leave the nest serial, which is always correct.
"""

from __future__ import annotations

from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule

from .block_info import loop_infos, nest_blocks
from .space import GlobalRule, SpaceContext


class ParallelOuter(GlobalRule):
    """Fuse short outer loops and mark the outermost loop of every nest parallel."""

    name = "parallel_outer"

    def apply(self, sch: Schedule, ctx: SpaceContext) -> Schedule:
        out = sch.copy()
        if not ctx.is_cpu:
            return out
        for name in nest_blocks(out.func):
            try:
                infos = loop_infos(out, out.get_block(name))
            except ScheduleError:
                continue
            first = 0
            while first + 1 < len(infos) and infos[first].extent == 1 and not infos[first].reduce:
                first += 1
            infos = infos[first:]
            top = infos[0].rv
            if (
                len(infos) > 1
                and not infos[0].reduce
                and not infos[1].reduce
                and (infos[0].extent or 0) < 4 * ctx.cores
            ):
                try:
                    top = out.fuse(infos[0].rv, infos[1].rv)
                except ScheduleError:
                    top = infos[0].rv
            try:
                out.parallel(top)
            except ScheduleError:
                pass
        return out
