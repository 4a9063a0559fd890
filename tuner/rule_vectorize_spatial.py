"""Vectorize spatial blocks: split the innermost loop by a sampled vector width.

This is the per-block half of MetaSchedule's parallel-vectorize-unroll for elementwise and
normalising blocks; `rule_parallel_outer` adds the parallel loops once every block is placed.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import divisors_among, is_reduction, loop_infos, uniform
from .space import ScheduleRule, SpaceContext, try_fork

VECTOR_WIDTHS = (4, 8, 16, 32, 64)


class VectorizeSpatial(ScheduleRule):
    """Innermost constant loop -> [outer, inner] with inner (a sampled width) vectorized."""

    name = "vectorize_spatial"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if is_reduction(sch.func, block) or not ctx.is_cpu:
            return []

        def build(t: Schedule) -> None:
            b = t.get_block(block)
            loops = loop_infos(t, b)
            if not loops:
                return
            inner = loops[-1]
            widths = divisors_among(inner.extent, VECTOR_WIDTHS)
            if widths:
                v = t.sample_categorical(widths, uniform(len(widths)))
                _, vec = t.split(inner.rv, [None, v])
                t.vectorize(vec)
            elif inner.extent is not None and inner.extent <= 64:
                t.vectorize(inner.rv)

        made = try_fork(sch, build)
        return [made] if made is not None else []
