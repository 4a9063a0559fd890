"""Multi-level tiling for CPU reductions with data reuse (matmul, dense, batch matmul).

MetaSchedule's CPU structure "SSRSRS": every spatial loop is split into four levels and every
reduction loop into two by `sample_perfect_tile`, then ordered

    S0 S1 R0 S2 R1 S3    (S0 runs in parallel, S3's last loop is vectorized)

The block accumulates into a `local` copy of its output (register/L1 accumulation) written back
at the end of an S0 or S1 tile (two sketches); the init is split off before R0.

Shapes as they come: where a spatial extent has no good tile (333 rows, 777 columns) and at
most 1/64 more work buys one, two more sketches first pad the block (`pad_spatial`): rows
to a tile of up to 8, the vector loop to up to 64 lanes (333 x 777: 336 x 784). The padded
output is the local accumulator, whose write-back stores the valid part; an input the
vector loop reads keeps its padded copy (contiguous lanes), the others are read in place
at a clamped index.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import is_reduction, loop_infos
from .padding import PAD_WASTE, pad_accumulator, padding
from .space import ScheduleRule, SpaceContext, try_fork

WRITE_BACK_LEVELS = (0, 1)
ROW_TILES = (2, 4, 8)  # padding targets of the outer spatial loops
LANE_TILES = (8, 16, 32, 64)  # padding targets of the vector (last spatial) loop


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
        last = max(n for n, i in enumerate(infos) if not i.reduce)
        pads = [
            0 if i.reduce else _cheap_padding(i.extent or 1, LANE_TILES if n == last else ROW_TILES)
            for n, i in enumerate(infos)
        ]
        out = []
        for counts in ([0] * len(infos), pads) if any(pads) else ([0] * len(infos),):
            for level in WRITE_BACK_LEVELS:
                made = try_fork(sch, lambda t, lv=level, c=counts: self._build(t, block, lv, c))
                if made is not None:
                    out.append(made)
        return out

    def _build(self, t: Schedule, block: str, level: int, counts: list[int]) -> None:
        b = t.get_block(block)
        if any(counts):
            write_back, _ = pad_accumulator(t, b, counts)
        else:
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


def _cheap_padding(extent: int, tiles: tuple[int, ...]) -> int:
    """`padding` where it costs at most PAD_WASTE of the extent, else 0: the unpadded
    sketches stay, so a padded one only pays where it is nearly free (a batch of 1 stays)."""
    pad = padding(extent, tiles)
    return pad if pad <= extent * PAD_WASTE else 0
