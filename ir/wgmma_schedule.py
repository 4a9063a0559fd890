"""The Hopper warpgroup-MMA tiling of a dense reduction (wgmma, sm_90a), for examples and tuner.

Each thread block computes a `warpgroups * 64` x `n` tile of the float32 accumulator; each
warpgroup (128 threads, threadIdx.x, warpgroups on threadIdx.y) holds its 64 x n share in
registers. Per 64-wide step of k (one 128-byte row of fp16) the block's threads copy the x
and w tiles into shared memory 16 bytes per thread, in the 128-byte swizzled layout wgmma
reads (`storage_swizzle`), software-pipelined over `stages` with cp.async; each warpgroup
then issues four `wgmma.mma_async` m64n{n}k16 on descriptors of those tiles as one batch
and waits for it. The accumulator goes back through a shared float32 tile (rows padded by
`out_pad` floats) and is written out converted, 16 bytes per thread.
"""

from __future__ import annotations

from .annotation_keys import PIPELINE_STAGES
from .errors import ScheduleError
from .intrinsics_wgmma import STORAGE_SWIZZLE, WGMMA_BATCH, WGMMA_N, wgmma_name
from .schedule import Schedule
from .tensorcore_schedule import tensorize_accumulation

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
) -> None:
    """Tile `acc_block` (loops i, j, k of dense x[m, k] . w[n, k]) onto warpgroup MMAs.

    m must be a multiple of 64 * warpgroups, n (the total) of `n`, k of 64. Every step is a
    recorded primitive, so the result replays from its trace.
    """
    if n not in WGMMA_N or warpgroups not in (1, 2) or stages < 2:
        raise ScheduleError(
            f"wgmma tiling needs n in {WGMMA_N}, 1 or 2 warpgroups and stages >= 2; "
            f"got n={n}, warpgroups={warpgroups}, stages={stages}"
        )
    acc = sch.get_block(acc_block)
    out = sch.get_block(out_block)
    frag_out = sch.cache_write(acc, 0, "wgmma.accumulator")
    i, j, kk = sch.get_loops(acc)
    bi, wi, ii = sch.split(i, [None, warpgroups, 64])
    bj, jj = sch.split(j, [None, n])
    ko, ki, kx = sch.split(kk, [None, TILE_K // 16, 16])
    sch.reorder(bi, bj, ko, wi, ki, ii, jj, kx)
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(wi, "threadIdx.y")
    for operand in (0, 1):  # 16 rows x 8 chunks of 16 bytes per warpgroup and copy
        tile = sch.cache_read(acc, operand, "shared")
        sch.compute_at(tile, ko)
        sch.annotate(tile, STORAGE_SWIZZLE, 128)
        rows, cols = sch.get_loops(tile)[-2:]
        _, ty, r = sch.split(rows, [None, warpgroups, 16])
        c, vec = sch.split(cols, [None, 8])
        lane = sch.fuse(r, c)
        sch.bind(ty, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        sch.vectorize(vec)
    sch.annotate(ko, PIPELINE_STAGES, stages)
    sch.unroll(ki)
    sch.annotate(ki, WGMMA_BATCH, 0)  # the four MMAs of a k step: one group, waited for
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
    rows, cols = sch.get_loops(out)[-2:]
    _, ty, r = sch.split(rows, [None, warpgroups, 128 // (n // 8)])
    c, vec = sch.split(cols, [None, 8])
    lane = sch.fuse(r, c)
    sch.bind(ty, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    sch.vectorize(vec)
