"""GPU multi-level tiling for reductions no other CUDA rule claims (fp32 matmul/dense, batch
matmul, small-m fp16 dense, odd shapes): MetaSchedule's "SSSRRSRS" with shared-memory staging.

Every non-trivial spatial loop (two or three of them) is tiled in five levels: S0 (blocks),
S1 (vthread), S2 (threads), S3 and S4 (register tile); the one reduction loop in three: R0
(k steps), R1, R2. The block runs

    S0 (blockIdx.x / y / z, innermost loop on x)
      R0                                        # one k step
        a_shared, b_shared = ...                # each input's tile, fetched by all threads
        S1 (vthread) S2 (fused: threadIdx.x) R1 S3 R2 S4 (S3, R2, S4 unrolled)
          acc_local[...] += a_shared[...] * b_shared[...]
      S1 S2 S3 S4: out[...] = acc_local[...]   # each thread writes its own registers back

R0 sits outside the vthread and thread loops, since ir's compute_at sizes a shared tile from
the loops below its location only: there the tile covers the block's whole footprint for one
k step, and every thread helps to fetch it (the copy loops fused, split by the thread count
and a sampled vector width {1, 2, 4}, bound to threadIdx.x, vectorized). The S0 loops get
one block axis each: fused, a tile that depends on only some of them would repeat. The
accumulator lives in registers (`local`): a float32 output gets it through `cache_write`, a
cast output (fp16/bf16) by computing the cast per thread and keeping the float32
intermediate `local`. Two sketches: shared rows padded by 16 bytes (storage_align, so the
rows that different threads read start in different banks) or not.

Decisions never change the structure. Each spatial level is a `sample_categorical` whose
candidates multiply to a divisor of the loop, so every split is perfect: threads are powers of
two > 1 (8-32 on the innermost loop, 4-16 on the next, 2-4 on a third: every combination is a
multiple of 32 when the loop sizes allow), S1, S3 and S4 are at most 2, 2 and 4 on the two
innermost loops and 1 elsewhere (a thread holds at most 256 accumulators), R1 is 4-16 and R2
1-4; R1's nest is unrolled up to a sampled number of steps (0, 16, 64, 512: MetaSchedule's
unroll decision, as on the CPU). In the index a thread's elements are contiguous (S0 S2 S1 S3
S4, outermost first), so its accumulator tile is one box that lowering compacts to registers.
With threads > 1 and R1 > 1, no copy or write-back loop ever vanishes at compute_at. The
postprocessor rejects samples over 1024 threads or the architecture's shared memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.ir.annotation_keys import AUTO_UNROLL
from tunefleet.ir.dtypes import itemsize
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import read_only_buffers
from tunefleet.ir.trace import RV

from .block_info import (
    LoopInfo,
    is_reduction,
    loop_infos,
    paired_output,
    pick_loops,
    uniform,
    writes_output,
)
from .rule_auto_unroll import MAX_STEPS
from .space import ScheduleRule, SpaceContext, try_fork

# (lowest, highest) threads along the innermost, the next and every other spatial loop
THREAD_RANGES = ((8, 32), (4, 16), (2, 4))
TILE_LEVELS = ((1, 2), (1, 2), (1, 2, 4))  # S1 (vthread), S3, S4 factors of the two innermost
K_STEPS = (4, 8, 16)  # R1; R1 * R2 is the k step staged in shared memory
K_INNER = (1, 2, 4)  # R2
VECTOR_WIDTHS = (1, 2, 4)
# shared rows padded so that consecutive rows start 16 bytes apart in the 128 bytes of banks
# (threads reading different rows of a tile hit different banks; 16-byte copies stay
# aligned), or not padded: one sketch each
PAD_BYTES = (16, 0)
BANK_BYTES = 128
BLOCK_AXES = ("blockIdx.x", "blockIdx.y", "blockIdx.z")  # S0 of the innermost loop first
MAX_SPATIAL = len(BLOCK_AXES)


@dataclass(frozen=True)
class _SpatialTiles:
    """One spatial loop's levels and the sampled values that rebuild its index."""

    levels: tuple[RV, RV, RV, RV, RV]  # S0 S1 S2 S3 S4
    threads: RV
    inner: tuple[RV, RV, RV]  # S1 S3 S4 factors


class GpuMultiLevelTiling(ScheduleRule):
    """SSSRRSRS tiling with shared-memory inputs and register accumulation on CUDA."""

    name = "gpu_multi_level_tiling"
    # 2: epilogues that pair columns (rope, gate|up) keep the pair in registers; 3: the loops
    # that pick within a pair are found after reverse_compute_at rebuilt the write-back nest
    version = 3

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if not ctx.is_gpu or not is_reduction(sch.func, block):
            return []
        probe = sch.copy()
        b = probe.get_block(block)
        infos = loop_infos(probe, b)
        if any(i.extent is None for i in infos):
            return []
        if any(probe.get(i.rv).kind != "serial" for i in infos):
            return []  # already scheduled by another rule
        consumer = _cast_consumer(probe, block)
        if consumer is False:
            return []
        paired = paired_output(sch, block) if consumer else None
        pairing = Pairing(paired.pair_axes, paired.pair_loops) if paired else Pairing((), ())
        if pairing.axes and len(infos) != len(probe.get(b).iter_vars):
            return []
        spatial = [i for n, i in enumerate(infos)
                   if not i.reduce and (i.extent or 0) > 1 and n not in pairing.axes]  # fmt: skip
        reduce = [i for i in infos if i.reduce and (i.extent or 0) > 1]
        if not 2 <= len(spatial) <= MAX_SPATIAL or sum(i.reduce for i in infos) != 1:
            return []
        k_sets = _k_sets(reduce[0].extent or 1)
        level_sets = _level_sets([i.extent or 1 for i in spatial])
        out = []
        for pad in PAD_BYTES:
            made = try_fork(
                sch,
                lambda t, p=pad: _build(t, block, consumer or None, k_sets, level_sets, p, pairing),
            )
            if made is not None:
                out.append(made)
        return out


def _cast_consumer(sch: Schedule, block: str) -> str | bool | None:
    """None when `block` writes a function output itself; the name of its single unscheduled
    elementwise consumer that writes an output; False when it is neither."""
    if writes_output(sch.func, block):
        return None
    consumers = sch.get_consumers(sch.get_block(block))
    if len(consumers) != 1:
        return False
    name = sch.get(consumers[0]).name
    if is_reduction(sch.func, name) or not writes_output(sch.func, name):
        return False
    if any(sch.get(lp).kind != "serial" for lp in sch.get_loops(consumers[0])):
        return False
    return name


def _k_sets(extent: int) -> list[list[int]]:
    """Candidates of R1 (> 1, so the k step never vanishes) and R2; every product divides k."""
    r1 = [s for s in K_STEPS if extent % s == 0]
    if not r1:
        r1 = [d for d in range(2, max(K_STEPS) + 1) if extent % d == 0][:2] or [extent]
    r2 = [v for v in K_INNER if extent % (max(r1) * v) == 0]
    return [r1, r2]


def _level_sets(extents: list[int]) -> list[list[list[int]]]:
    """Per spatial loop the candidates of its S2 (threads), S1, S3 and S4 factors: every
    combination divides the loop, so each split is perfect. Threads are powers of two > 1 in
    the loop's range (the innermost loop gets the widest; every product is a multiple of 32
    when the loops allow), and a thread's register tile stays within 2 x 2 x 4 per loop (1 on
    loops beyond the innermost two); the largest candidates go first where a loop is short."""
    out = []
    for pos, ext in enumerate(reversed(extents)):
        lo, hi = THREAD_RANGES[min(pos, len(THREAD_RANGES) - 1)]
        threads = [t for t in (2, 4, 8, 16, 32) if lo <= t <= hi and ext % t == 0]
        if not threads:
            threads = [d for d in range(2, hi + 1) if ext % d == 0][:2] or [ext]
        sets = [threads, *([list(c) for c in TILE_LEVELS] if pos < 2 else [[1]] * 3)]
        while ext % (max(sets[0]) * max(sets[1]) * max(sets[2]) * max(sets[3])):
            widest = max(range(4), key=lambda n: (len(sets[n]) > 1, max(sets[n]), -n))
            sets[widest] = sets[widest][:-1]
        out.append(sets)
    return list(reversed(out))


def _tile_spatial(t: Schedule, lp: LoopInfo, sets: list[list[int]]) -> _SpatialTiles:
    """Split one spatial loop into S0 S2 S1 S3 S4 (index order): a thread's elements are
    contiguous, so its register tile is one box."""
    tx, s1, s3, s4 = (t.sample_categorical(c, uniform(len(c))) for c in sets)
    s0_, s2_, s1_, s3_, s4_ = t.split(lp.rv, [None, tx, s1, s3, s4])
    return _SpatialTiles((s0_, s1_, s2_, s3_, s4_), tx, (s1, s3, s4))


@dataclass(frozen=True)
class Pairing:
    """The accumulator axes an epilogue reads whole (kept in each thread's registers,
    innermost) and the output loops that pick within them (`block_info.PairedOutput`)."""

    axes: tuple[int, ...]
    loops: tuple[int, ...]


def _build(
    t: Schedule,
    block: str,
    consumer: str | None,
    k_sets: list[list[int]],
    level_sets: list[list[list[int]]],
    pad: int,
    pairing: Pairing,
) -> None:
    b = t.get_block(block)
    if consumer is None:
        out = t.cache_write(b, 0, "local")
    else:
        out = t.get_block(consumer)
        t.set_scope(b, 0, "local")
    infos = loop_infos(t, b)
    pair = [infos[n].rv for n in pairing.axes]
    spatial = [i for n, i in enumerate(infos)
               if not i.reduce and (i.extent or 0) > 1 and n not in pairing.axes]  # fmt: skip
    (red,) = [i for i in infos if i.reduce and (i.extent or 0) > 1]
    tiles = [_tile_spatial(t, lp, sets) for lp, sets in zip(spatial, level_sets, strict=True)]
    r1_, r2_ = (t.sample_categorical(c, uniform(len(c))) for c in k_sets)
    r0, r1, r2 = t.split(red.rv, [None, r1_, r2_])
    lv = [[tile.levels[n] for tile in tiles] for n in range(5)]
    unit = [i.rv for i in infos if not i.reduce and (i.extent or 0) <= 1]
    t.reorder(*unit, *lv[0], r0, *lv[1], *lv[2], r1, *lv[3], r2, *lv[4], *pair)
    # regions first, while every index is a plain sum of split loops
    inputs = [r.buffer for r in t.get(b).reads if r.buffer in t.func.inputs]
    shared = []
    for buf in inputs:
        tile_buf = t.cache_read(b, read_only_buffers(t.get(b)).index(buf), "shared")
        t.compute_at(tile_buf, r0)
        if pad and len(buf.shape) >= 2:
            width = pad // itemsize(buf.dtype)
            t.storage_align(
                tile_buf, 0, len(buf.shape) - 2, BANK_BYTES // itemsize(buf.dtype), width
            )
        shared.append(tile_buf)
    t.reverse_compute_at(out, lv[0][-1])
    depth = len(unit) + len(lv[0])
    picks: tuple[int, ...] = ()
    if pairing.loops:  # the output's loops that pick within a pair go innermost, asked
        # after the move: reverse_compute_at lays the nest out in the output's dim order
        picks = pick_loops(t, out, t.get(b).writes[0].buffer.name)
        o_loops = t.get_loops(out)
        t.reorder(*(lp for n, lp in enumerate(o_loops) if n >= depth and n not in picks),
                  *(o_loops[n] for n in picks))  # fmt: skip
    for v, axis in zip(reversed(lv[0]), BLOCK_AXES, strict=False):
        t.bind(v, axis)
    for v in lv[1]:
        t.bind(v, "vthread")
    tx = t.fuse(*lv[2])
    t.bind(tx, "threadIdx.x")
    for v in (*lv[3], r2, *lv[4], *pair):
        t.unroll(v)
    limit = t.sample_categorical(list(MAX_STEPS), uniform(len(MAX_STEPS)))
    t.annotate(r1, AUTO_UNROLL, limit)  # R1 unrolled too when its nest is short enough
    threads = [tile.threads for tile in tiles]
    # a copied vector never straddles a row: the width divides every k step and row tile
    rows = [min(k_sets[0]), *(min(sets[0]) for sets in level_sets[-1:])]
    widths = [v for v in VECTOR_WIDTHS if all(r % v == 0 for r in rows)]
    vec = t.sample_categorical(widths, uniform(len(widths)))
    for tile_buf in shared:
        fetch_cooperatively(t, tile_buf, depth + 1, threads, vec)
    _bind_write_back(t, out, tiles, depth, len(picks))
    t.decompose_reduction(b, r0)


def fetch_cooperatively(t: Schedule, tile: RV, depth: int, threads: list[RV], vec: RV) -> None:
    """All threads copy a shared tile computed `depth` loops deep: the copy loops fused, split
    by the block's threads (the product of `threads`, fused to threadIdx.x) and `vec`."""
    loops = t.get_loops(tile)[depth:]
    fused = t.fuse(*loops) if len(loops) > 1 else loops[0]
    parts = t.split(fused, [None, *threads, vec])
    lane = t.fuse(*parts[1:-1]) if len(threads) > 1 else parts[1]
    t.bind(lane, "threadIdx.x")
    t.vectorize(parts[-1])


def _bind_write_back(
    t: Schedule, out: RV, tiles: list[_SpatialTiles], depth: int, picks: int = 0
) -> None:
    """Split the write-back nest (one loop per tiled spatial loop, the block's tile) the way
    the compute nest is split, so that each thread reads its own registers; the `picks`
    innermost loops (within a pair) stay in the thread, unrolled."""
    loops = t.get_loops(out)[depth:]
    if picks:
        for lp in loops[-picks:]:
            t.unroll(lp)
        loops = loops[:-picks]
    levels: list[list[RV]] = [[], [], [], []]
    for lp, tile in zip(loops, tiles, strict=True):
        s1, s3, s4 = tile.inner
        parts = t.split(lp, [tile.threads, s1, s3, s4])
        for n, part in enumerate((parts[1], parts[0], parts[2], parts[3])):
            levels[n].append(part)
    t.reorder(*levels[0], *levels[1], *levels[2], *levels[3])
    for v in levels[0]:
        t.bind(v, "vthread")
    tx = t.fuse(*levels[1]) if len(levels[1]) > 1 else levels[1][0]
    t.bind(tx, "threadIdx.x")
    for v in (*levels[2], *levels[3]):
        t.unroll(v)
