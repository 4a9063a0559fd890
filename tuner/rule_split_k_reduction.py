"""Split-K reductions: vectorize along the reduction axis through rfactor.

For a reduction whose innermost loop is its only reduce loop and walks the last index of a
read buffer (dense/GEMV rows, rmsnorm sums of squares, softmax max and sum), the loop is split
by a sampled vector width `v`, and `rfactor` turns the inner part into a spatial axis of
partial results: each of `v` lanes accumulates its own stripe of k with contiguous loads (the
wide weight loads of a decode GEMV), and a final block adds the lanes. The final block's own
spatial loops are split into an outer (parallel) level, a cache block (1-16, where the extent
allows) and a register tile (2-8; sizes > 1, so the loop structure never depends on a
decision), and the partial block is computed inside the cache block:

    for i0, j0:                       # parallel
      for i1, j1:                     # cache block: its rows of x and w stay in L2 over all k
        for k0: for i2: for j2: for lane (vectorized):  acc[i2, j2, lane] += x * w
        for i2, j2: for lane (simd reduction): out[i, j] += acc[i2, j2, lane]

Intermediate reductions fork into two sketches: kept at the root, or computed at the
outermost legal loop of their consumer (one row of a norm or softmax at a time).
"""

from __future__ import annotations

from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import BufferLoad
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import find_block
from tunefleet.ir.stmt import BlockRealize
from tunefleet.ir.trace import RV
from tunefleet.ir.visit import walk

from .block_info import divisors_among, is_reduction, loop_infos, uniform, writes_output
from .space import ScheduleRule, SpaceContext, try_fork

LANE_WIDTHS = (4, 8, 16, 32, 64, 128)
TILE_SIZES = (2, 4, 8, 16)
BLOCK_SIZES = (1, 2, 4, 8, 16, 32)


def _innermost_contiguous(sch: Schedule, block: str) -> bool:
    """True if the block's reduce iter var is the last index of some buffer it reads."""
    found = find_block(sch.func, block)
    if found is None:
        return False
    blk = found[0].block
    red = [iv.var for iv in blk.iter_vars if iv.kind == "reduce"]
    if len(red) != 1:
        return False
    return any(
        isinstance(n, BufferLoad) and n.indices and n.indices[-1] == red[0] for n in walk(blk.body)
    )


class SplitKReduction(ScheduleRule):
    """rfactor over a vector-width inner slice of k; register tile; optional compute-at."""

    name = "split_k_reduction"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if not ctx.is_cpu or not is_reduction(sch.func, block):
            return []
        if not _innermost_contiguous(sch, block):
            return []
        probe = sch.copy()
        infos = loop_infos(probe, probe.get_block(block))
        if not infos or not infos[-1].reduce or sum(i.reduce for i in infos) != 1:
            return []
        lanes = divisors_among(infos[-1].extent, LANE_WIDTHS)
        if not lanes:
            return []
        locations: list[int | None] = [None]
        if not writes_output(sch.func, block):
            locations.append(self._first_legal_location(sch, block, lanes))
        out = []
        for loc in dict.fromkeys(locations):
            made = try_fork(sch, lambda t, loc=loc: self._build(t, block, lanes, loc))
            if made is not None:
                out.append(made)
        return out

    @staticmethod
    def _first_legal_location(sch: Schedule, block: str, lanes: list[int]) -> int | None:
        """The outermost consumer loop the final block can be computed at (None: none)."""
        trial = sch.copy()
        try:
            b = trial.get_block(block)
            _, kv = trial.split(trial.get_loops(b)[-1], [None, lanes[0]])
            trial.rfactor(kv, len(trial.get(b).writes[0].buffer.shape))
            fin = trial.get_block(block)
            consumers = trial.get_consumers(fin)
        except ScheduleError:
            return None
        if not consumers:
            return None
        n = len(trial.get_loops(consumers[0]))
        for idx in range(n):
            attempt = trial.copy()
            try:
                attempt.compute_at(fin, attempt.sample_compute_location(fin, decision=idx))
                return idx
            except ScheduleError:
                continue
        return None

    @staticmethod
    def _build(t: Schedule, block: str, lanes: list[int], location: int | None) -> None:
        b = t.get_block(block)
        k = t.get_loops(b)[-1]
        v = t.sample_categorical(lanes, uniform(len(lanes)))
        _, kv = t.split(k, [None, v])
        ndim = len(t.get(b).writes[0].buffer.shape)
        rf = t.rfactor(kv, ndim)
        fin = t.get_block(block)
        if location is not None:
            t.compute_at(fin, t.sample_compute_location(fin, decision=location))
        infos = loop_infos(t, fin)
        shared = {lp.rv for lp in infos[:-1] if _holds_other_blocks(t, lp.rv, block)}
        own = [lp for lp in infos[:-1] if lp.rv not in shared]
        tiled = [lp for lp in own if divisors_among(lp.extent, TILE_SIZES)][-2:]
        levels: list[list[RV]] = [[], [], []]  # outer (parallel), cache block, register
        for lp in tiled:
            sizes = divisors_among(lp.extent, TILE_SIZES)
            reg = t.sample_categorical(sizes, uniform(len(sizes)))
            assert lp.extent is not None
            mids = [m for m in BLOCK_SIZES if lp.extent % (m * max(sizes)) == 0]
            if len(mids) > 1:
                mid = t.sample_categorical(mids, uniform(len(mids)))
                o, m, i = t.split(lp.rv, [None, mid, reg])
                levels[1].append(m)
            else:
                o, i = t.split(lp.rv, [None, reg])
            levels[0].append(o)
            levels[2].append(i)
        order = [*levels[0], *levels[1], *levels[2]]
        if len(order) > 1:
            t.reorder(*order)
        outers = levels[1] or levels[0]
        anchor = outers[-1] if outers else (infos[-2].rv if len(infos) > 1 else None)
        if anchor is None:
            return
        t.compute_at(rf, anchor)
        anchor_var = t.get(anchor).var
        rf_loops = t.get_loops(rf)
        depth = next(i for i, lp in enumerate(rf_loops) if t.get(lp).var == anchor_var) + 1
        ax, k0 = rf_loops[depth:-1], rf_loops[-1]
        if ax:
            t.reorder(k0, *ax)
            t.vectorize(ax[-1])
            for lp in ax[:-1]:
                t.unroll(lp)
        t.decompose_reduction(rf, k0)
        try:
            t.decompose_reduction(fin, t.get_loops(fin)[-1])
            # a simd reduction adds the lanes as a tree instead of one dependent add per lane
            t.vectorize(t.get_loops(fin)[-1])
        except ScheduleError:
            pass


def _holds_other_blocks(t: Schedule, loop: RV, block: str) -> bool:
    """True if blocks other than `block` sit under the loop (it is shared with a consumer)."""
    return any(
        isinstance(n, BlockRealize) and n.block.name != block for n in walk(t.get(loop).body)
    )
