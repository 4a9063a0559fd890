"""Multi-level tiling for CPU reductions with data reuse (matmul, dense, batch matmul).

MetaSchedule's CPU structure "SSRSRS": every spatial loop is split into four levels and every
reduction loop into two by `sample_perfect_tile`, then ordered

    S0 S1 R0 S2 R1 S3    (S0 runs in parallel, S3's last loop is vectorized)

The block accumulates into a `local` copy of its output (register/L1 accumulation) written back
at the end of an S0 or S1 tile (two sketches); the init is split off before R0.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import is_reduction, loop_infos
from .space import ScheduleRule, SpaceContext, try_fork

WRITE_BACK_LEVELS = (0, 1)


class MultiLevelTiling(ScheduleRule):
    """SSRSRS tiling with a local accumulator, for blocks with >= 2 non-trivial spatial loops."""

    name = "multi_level_tiling"
    exclusive = False  # split-K tiling may offer an alternative for the same block

    def __init__(self, max_innermost_factor: int = 16, max_vector_factor: int = 64) -> None:
        self.max_innermost_factor = max_innermost_factor
        self.max_vector_factor = max_vector_factor

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if not ctx.is_cpu or not is_reduction(sch.func, block):
            return []
        probe = sch.copy()
        infos = loop_infos(probe, probe.get_block(block))
        spatial = [i for i in infos if not i.reduce]
        if any(i.extent is None for i in infos):
            return []
        if sum(1 for i in spatial if (i.extent or 0) > 1) < 2:
            return []
        out = []
        for level in WRITE_BACK_LEVELS:
            made = try_fork(sch, lambda t, level=level: self._build(t, block, level))
            if made is not None:
                out.append(made)
        return out

    def _build(self, t: Schedule, block: str, level: int) -> None:
        b = t.get_block(block)
        write_back = t.cache_write(b, 0, "local")
        infos = loop_infos(t, b)
        s_levels: list[list] = [[], [], [], []]
        r_levels: list[list] = [[], []]
        last_spatial = max(i for i, lp in enumerate(infos) if not lp.reduce)
        for idx, lp in enumerate(infos):
            if lp.reduce:
                factors = t.sample_perfect_tile(lp.rv, 2, self.max_innermost_factor)
                parts = t.split(lp.rv, factors)
                for n, part in enumerate(parts):
                    r_levels[n].append(part)
            else:
                inner = self.max_vector_factor if idx == last_spatial else 8
                factors = t.sample_perfect_tile(lp.rv, 4, inner)
                parts = t.split(lp.rv, factors)
                for n, part in enumerate(parts):
                    s_levels[n].append(part)
        order = [*s_levels[0], *s_levels[1], *r_levels[0], *s_levels[2], *r_levels[1]]
        order += s_levels[3]
        t.reorder(*order)
        t.reverse_compute_at(write_back, s_levels[level][-1])
        t.decompose_reduction(b, r_levels[0][0])
        t.vectorize(s_levels[3][-1])
        for lp in s_levels[3][:-1]:
            t.unroll(lp)
