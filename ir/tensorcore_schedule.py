"""The WMMA tensor-core tiling of a dense/matmul reduction, shared by the examples and the tuner.

Each block computes a `tile` of the float32 accumulator with `warps_m x warps_n` warps, each
warp holding 16 x 16 WMMA fragments. Per `tile_k` step of k the two operand tiles are fetched
cooperatively into shared memory (16 bytes per thread, rows padded by `pad` elements through
storage_align so fragment loads avoid bank conflicts), optionally software-pipelined over
`stages`; the MMAs are tensorized, and the accumulator goes back through shared memory to
the output, 4 elements per thread.
"""

from __future__ import annotations

from .schedule import Schedule

WMMA_MMA = {"float16": "wmma_mma_f16_f32", "bfloat16": "wmma_mma_bf16_f32"}


def apply_wmma_tiling(
    sch: Schedule,
    out_block: str,
    acc_block: str,
    mma: str,
    *,
    warps: tuple[int, int],
    tile: tuple[int, int],
    tile_k: int,
    pad: int,
    stages: int = 1,
) -> None:
    """Tile `acc_block` (loops i, j, k) onto tensor cores and write `out_block` from it.

    Every step is a recorded schedule primitive, so the result replays from its trace.
    """
    warps_m, warps_n = warps
    tile_m, tile_n = tile
    acc = sch.get_block(acc_block)
    out = sch.get_block(out_block)
    frag_out = sch.cache_write(acc, 0, "wmma.accumulator")
    i, j, kk = sch.get_loops(acc)
    frags_m, frags_n = tile_m // warps_m // 16, tile_n // warps_n // 16
    bi, wi, fi, ii = sch.split(i, [None, warps_m, frags_m, 16])
    bj, wj, fj, jj = sch.split(j, [None, warps_n, frags_n, 16])
    ko, ki, kx = sch.split(kk, [None, tile_k // 16, 16])
    sch.reorder(bi, bj, ko, wi, wj, ki, fi, fj, ii, jj, kx)
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(wi, "threadIdx.z")
    sch.bind(wj, "threadIdx.y")
    for operand in (0, 1):  # operand tiles into shared memory, 16 bytes per thread and step
        tile_buf = sch.cache_read(acc, operand, "shared")
        sch.compute_at(tile_buf, ko)
        if pad:
            sch.storage_align(tile_buf, 0, 0, tile_k, pad)
        rows, cols = sch.get_loops(tile_buf)[-2:]
        _, tz, ty, r = sch.split(rows, [None, warps_m, warps_n, 32 // (tile_k // 8)])
        c, vec = sch.split(cols, [None, 8])
        lane = sch.fuse(r, c)
        sch.bind(tz, "threadIdx.z")
        sch.bind(ty, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        sch.vectorize(vec)
    if stages > 1:  # copies of later k steps in flight (cp.async) while this one computes
        sch.annotate(ko, "software_pipeline_stages", stages)
    for loop in (ki, fi, fj):
        sch.unroll(loop)  # constant fragment indices keep the fragments in registers
    sch.reverse_compute_at(frag_out, bj)
    init = sch.decompose_reduction(acc, ko)
    sch.tensorize(ii, mma)
    sch.tensorize(sch.get_loops(init)[-2], "wmma_fill_f32")
    sch.set_scope(frag_out, 0, "shared")  # the float32 tile, staged in shared memory
    rows, cols = sch.get_loops(frag_out)[-2:]
    t0, f0, i0 = sch.split(rows, [warps_m, frags_m, 16])
    t1, f1, i1 = sch.split(cols, [warps_n, frags_n, 16])
    sch.reorder(t0, t1, f0, f1, i0, i1)
    sch.bind(t0, "threadIdx.z")
    sch.bind(t1, "threadIdx.y")
    sch.unroll(f0)
    sch.unroll(f1)
    sch.tensorize(i0, "wmma_store_f32")
    sch.reverse_compute_at(out, bj)  # convert and write the output, 4 elements per thread
    rows, cols = sch.get_loops(out)[-2:]
    _, tz, ty = sch.split(rows, [None, warps_m, warps_n])
    lane, vec = sch.split(cols, [32, None])
    sch.bind(tz, "threadIdx.z")
    sch.bind(ty, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    sch.vectorize(vec)
