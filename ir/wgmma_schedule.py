"""The Hopper warpgroup-MMA tiling of a dense reduction (wgmma, sm_90a), for examples and tuner.

Each thread block computes a `warpgroups * 64` x `n` tile of the float32 accumulator; each
warpgroup (128 threads, threadIdx.x, warpgroups on threadIdx.y) holds its 64 x n share in
registers. Per 64-wide step of k (one 128-byte row of fp16) the block's threads copy the x
and w tiles into shared memory 16 bytes per thread, in the 128-byte swizzled layout wgmma
reads (`storage_swizzle`), software-pipelined over `stages` with cp.async; each warpgroup
then issues four `wgmma.mma_async` m64n{n}k16 on descriptors of those tiles as one batch
and waits for it. The accumulator goes back through a shared float32 tile (rows padded by
`out_pad` floats) and is written out converted, 16 bytes per thread.

`apply_wgmma_paired_tiling` does the same for a dense whose epilogue pairs columns (rope's
halves, gate|up): the accumulator is laid out [i, ..., 2, j] and each block's n columns are
n / 2 of j for both halves of the pair, so the epilogue finds both halves in its tile.
"""

from __future__ import annotations

import math

from .annotation_keys import PIPELINE_STAGES
from .errors import ScheduleError
from .expr import Const
from .intrinsics_wgmma import STORAGE_SWIZZLE, WGMMA_BATCH, WGMMA_N, wgmma_name
from .schedule import Schedule
from .tensorcore_schedule import (
    loops_under,
    pair_loops,
    shared_operand,
    tensorize_accumulation,
)
from .trace import RV

TILE_K = 64  # one 128-byte swizzle row of fp16 / bf16


def apply_wgmma_tiling(
    sch: Schedule,
    out_block: str,
    acc_block: str,
    dtype: str,
    *,
    warpgroups: int,
    n: int,
    stages: int,
    out_pad: int = 4,
    operand_copies: tuple[str | None, str | None] = (None, None),
) -> None:
    """Tile `acc_block` (loops i, j, k of dense x[m, k] . w[n, k]) onto warpgroup MMAs.

    m must be a multiple of 64 * warpgroups, n (the total) of `n`, k of 64. An operand
    whose copy block is named in `operand_copies` (pad_spatial's) is fetched by that block
    (see tensorcore_schedule.apply_wmma_tiling). Every step is a recorded primitive, so the
    result replays from its trace.
    """
    acc, out, frag_out = _start(sch, out_block, acc_block, warpgroups, n, stages)
    i, j, kk = sch.get_loops(acc)
    bi, wi, ii = sch.split(i, [None, warpgroups, 64])
    bj, jj = sch.split(j, [None, n])
    ko, ki, kx = sch.split(kk, [None, TILE_K // 16, 16])
    sch.reorder(bi, bj, ko, wi, ki, ii, jj, kx)
    _main_loop(sch, acc, (bi, bj, wi, ko, ki), warpgroups, stages, operand_copies)
    tensorize_accumulation(
        sch, acc, frag_out, ko=ko, ii=ii, bj=bj, mma=wgmma_name(n, dtype), fill=f"wgmma_fill_n{n}"
    )
    sch.set_scope(frag_out, 0, "shared")  # the float32 tile, staged in shared memory
    if out_pad:
        sch.storage_align(frag_out, 0, 0, n, out_pad)
    rows = sch.get_loops(frag_out)[-2]
    t0, i0 = sch.split(rows, [warpgroups, 64])
    sch.bind(t0, "threadIdx.y")
    sch.tensorize(i0, f"wgmma_store_n{n}")
    sch.reverse_compute_at(out, bj)  # convert and write the output, 8 elements per thread
    _write_out(sch, out, bj, warpgroups)


def apply_wgmma_paired_tiling(
    sch: Schedule,
    out_block: str,
    acc_block: str,
    dtype: str,
    *,
    pair: int,
    warpgroups: int,
    n: int,
    stages: int,
    operand_copies: tuple[str | None, str | None] = (None, None),
) -> None:
    """Tile `acc_block` (loops i, outer..., p, j, k; p the 2-wide pair axis at spatial
    position `pair`, j last) onto warpgroup MMAs whose n columns are n / 2 of j for p = 0
    and p = 1, and write `out_block`, which reads both halves, from the shared tile.

        acc[i, p, j] += x[i, k] * w[p, j, k]; out[i, j] = silu(acc[i, 0, j]) * acc[i, 1, j]
        -> block (bi, bj): wgmma m64n{n} over rows i, columns (p, j in bj's n/2), then
           out[i, j in bj's n/2] from the float32 tile in shared memory

    The shared tile is unpadded (its columns span two dims). m must be a multiple of 64 *
    warpgroups, j's extent of n / 2, k of 64; `operand_copies` as in apply_wgmma_tiling.
    """
    acc, out, frag_out = _start(sch, out_block, acc_block, warpgroups, n, stages)
    i, outer, p, j, kk = pair_loops(sch, acc, pair, "wgmma paired tiling")
    bi, wi, ii = sch.split(i, [None, warpgroups, 64])
    bj, jj = sch.split(j, [None, n // 2])
    ko, ki, kx = sch.split(kk, [None, TILE_K // 16, 16])
    sch.reorder(bi, *outer, bj, ko, wi, ki, ii, p, jj, kx)
    bx = sch.fuse(*outer, bj) if outer else bj
    _main_loop(sch, acc, (bi, bx, wi, ko, ki), warpgroups, stages, operand_copies)
    sch.reverse_compute_at(frag_out, bx)
    init = sch.decompose_reduction(acc, ko)
    sch.fuse(p, jj)  # the n columns of the MMA: both halves, contiguous in the shared tiles
    sch.tensorize(ii, wgmma_name(n, dtype))
    *_, fill_rows, fill_p, fill_j = sch.get_loops(init)
    sch.fuse(fill_p, fill_j)
    sch.tensorize(fill_rows, f"wgmma_fill_n{n}")
    sch.set_scope(frag_out, 0, "shared")
    rows, *cols = loops_under(sch, frag_out, bx)
    t0, i0 = sch.split(rows, [warpgroups, 64])
    sch.bind(t0, "threadIdx.y")
    sch.reverse_compute_at(out, bx)  # before the store's columns fuse: out reads them as a box
    sch.fuse(*cols)
    sch.tensorize(i0, f"wgmma_store_n{n}")
    _write_out(sch, out, bx, warpgroups)


def _start(
    sch: Schedule, out_block: str, acc_block: str, warpgroups: int, n: int, stages: int
) -> tuple[RV, RV, RV]:
    """Check a variant and cache the accumulator into wgmma registers: (acc, out, frag_out)."""
    if n not in WGMMA_N or warpgroups not in (1, 2) or stages < 2:
        raise ScheduleError(
            f"wgmma tiling needs n in {WGMMA_N}, 1 or 2 warpgroups and stages >= 2; "
            f"got n={n}, warpgroups={warpgroups}, stages={stages}"
        )
    acc = sch.get_block(acc_block)
    out = sch.get_block(out_block)
    return acc, out, sch.cache_write(acc, 0, "wgmma.accumulator")


def _main_loop(
    sch: Schedule,
    acc: RV,
    loops: tuple[RV, RV, RV, RV, RV],
    warpgroups: int,
    stages: int,
    copies: tuple[str | None, str | None],
) -> None:
    """Bind the block rows / columns and the warpgroups (`bi, bj, wi`), fetch the operands
    of each k step `ko` in `stages`, and issue the MMAs of `ki` as one waited-for group."""
    bi, bj, wi, ko, ki = loops
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(wi, "threadIdx.y")
    _fetch_operands(sch, acc, ko, warpgroups, copies)
    sch.annotate(ko, PIPELINE_STAGES, stages)
    sch.unroll(ki)
    sch.annotate(ki, WGMMA_BATCH, 0)  # the four MMAs of a k step: one group, waited for


def _fetch_operands(
    sch: Schedule, acc: RV, ko: RV, warpgroups: int, copies: tuple[str | None, str | None]
) -> None:
    """Copy both operand tiles of a k step into swizzled shared memory: 16 rows x 8 chunks
    of 16 bytes per warpgroup and copy (a tile's leading dims fuse into its rows)."""
    for operand in (0, 1):
        tile = shared_operand(sch, acc, operand, copies[operand])
        sch.compute_at(tile, ko)
        sch.annotate(tile, STORAGE_SWIZZLE, 128)
        *lead, cols = loops_under(sch, tile, ko)
        rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        _, ty, r = sch.split(rows, [None, warpgroups, 16])
        c, vec = sch.split(cols, [None, 8])
        lane = sch.fuse(r, c)
        sch.bind(ty, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        sch.vectorize(vec)


def _write_out(sch: Schedule, out: RV, at: RV, warpgroups: int) -> None:
    """Convert and write `out`'s tile under `at`, 8 elements (16 bytes) per thread along its
    last dim; its other column dims join the lanes."""
    rows, *mid, cols = [lp for lp in loops_under(sch, out, at) if _extent(sch, lp) != 1]
    width = math.prod(_extent(sch, lp) for lp in (*mid, cols))
    _, ty, r = sch.split(rows, [None, warpgroups, 128 // (width // 8)])
    c, vec = sch.split(cols, [None, 8])
    lane = sch.fuse(r, *mid, c)
    sch.bind(ty, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    sch.vectorize(vec)


def _extent(sch: Schedule, loop: RV) -> int:
    ext = sch.get(loop).extent
    if not isinstance(ext, Const):
        raise ScheduleError(
            f"wgmma tiling needs constant extents, loop {sch.get(loop).var.name} has {ext}"
        )
    return int(ext.value)
