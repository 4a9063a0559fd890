"""Tensor-core tilings of a dense/matmul reduction, shared by the examples and the tuner.

`tile_warps`, `fetch_to_shared` and `write_through_shared` are the steps every warp-level
tiling takes (the WMMA one here, the mma.sync one in examples/dense_tensorcore_cuda.py).

Each block computes a `tile` of the float32 accumulator with `warps_m x warps_n` warps, each
warp holding 16 x 16 WMMA fragments. Per `tile_k` step of k the two operand tiles are fetched
cooperatively into shared memory (16 bytes per thread, rows padded by `pad` elements through
storage_align so fragment loads avoid bank conflicts), optionally software-pipelined over
`stages`; the MMAs are tensorized, and the accumulator goes back through shared memory to
the output, 4 elements per thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from .annotation_keys import PIPELINE_STAGES
from .schedule import Schedule
from .trace import RV

WMMA_MMA = {"float16": "wmma_mma_f16_f32", "bfloat16": "wmma_mma_bf16_f32"}


@dataclass(frozen=True)
class WarpTiles:
    """The loops of a block / warp / 16 x 16 fragment tiling of an accumulator (i, j, k)."""

    frag_out: RV  # the accumulator's cache_write block (fragment scope)
    bi: RV
    bj: RV
    ko: RV
    wi: RV
    wj: RV
    ki: RV
    fi: RV
    fj: RV
    ii: RV
    jj: RV
    kx: RV
    warps: tuple[int, int]
    frags: tuple[int, int]  # fragments per warp along i and j


def tile_warps(
    sch: Schedule,
    acc: RV,
    scope: str,
    *,
    warps: tuple[int, int],
    tile: tuple[int, int],
    tile_k: int,
) -> WarpTiles:
    """Give each block a `tile` of `acc`'s output and each of its `warps` 16 x 16 fragments.

    Caches the accumulator into `scope`, splits i / j into block, warp, fragment and 16 and k
    into `tile_k` steps of 16, orders them block, k step, warp, 16-wide k, fragment, and binds
    blocks to blockIdx.y / x and warps to threadIdx.z / y.
    """
    warps_m, warps_n = warps
    frag_out = sch.cache_write(acc, 0, scope)
    i, j, kk = sch.get_loops(acc)
    frags_m, frags_n = tile[0] // warps_m // 16, tile[1] // warps_n // 16
    bi, wi, fi, ii = sch.split(i, [None, warps_m, frags_m, 16])
    bj, wj, fj, jj = sch.split(j, [None, warps_n, frags_n, 16])
    ko, ki, kx = sch.split(kk, [None, tile_k // 16, 16])
    sch.reorder(bi, bj, ko, wi, wj, ki, fi, fj, ii, jj, kx)
    sch.bind(bi, "blockIdx.y")
    sch.bind(bj, "blockIdx.x")
    sch.bind(wi, "threadIdx.z")
    sch.bind(wj, "threadIdx.y")
    frags = (frags_m, frags_n)
    return WarpTiles(frag_out, bi, bj, ko, wi, wj, ki, fi, fj, ii, jj, kx, warps, frags)


def fetch_to_shared(
    sch: Schedule, tile: RV, warps: tuple[int, int], row_len: int, pad: int
) -> None:
    """Copy a shared operand tile (already computed at its k step) with all warps, 16 bytes
    per thread.

    Rows of `row_len` elements are padded by `pad` (storage_align) so that fragment loads of
    16 rows hit distinct banks; each warp copies whole rows, 32 lanes over rows x 16-byte
    chunks, the chunk vectorized.
    """
    warps_m, warps_n = warps
    if pad:
        sch.storage_align(tile, 0, 0, row_len, pad)
    rows, cols = sch.get_loops(tile)[-2:]
    _, tz, ty, r = sch.split(rows, [None, warps_m, warps_n, max(1, 32 // (row_len // 8))])
    c, vec = sch.split(cols, [None, 8])
    lane = sch.fuse(r, c)
    sch.bind(tz, "threadIdx.z")
    sch.bind(ty, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    sch.vectorize(vec)


def write_through_shared(
    sch: Schedule, tiles: WarpTiles, out: RV, store: str, *, row_len: int = 0, pad: int = 0
) -> None:
    """Stage the float32 accumulator tile in shared memory (fragments stored with the `store`
    intrinsic, rows of `row_len` padded by `pad` floats), then convert and write `out` from
    it with all threads, vectorized."""
    warps_m, warps_n = tiles.warps
    frags_m, frags_n = tiles.frags
    sch.set_scope(tiles.frag_out, 0, "shared")
    if pad:
        sch.storage_align(tiles.frag_out, 0, 0, row_len, pad)
    rows, cols = sch.get_loops(tiles.frag_out)[-2:]
    t0, f0, i0 = sch.split(rows, [warps_m, frags_m, 16])
    t1, f1, i1 = sch.split(cols, [warps_n, frags_n, 16])
    sch.reorder(t0, t1, f0, f1, i0, i1)
    sch.bind(t0, "threadIdx.z")
    sch.bind(t1, "threadIdx.y")
    sch.unroll(f0)
    sch.unroll(f1)
    sch.tensorize(i0, store)
    sch.reverse_compute_at(out, tiles.bj)
    rows, cols = sch.get_loops(out)[-2:]
    _, tz, ty = sch.split(rows, [None, warps_m, warps_n])
    lane, vec = sch.split(cols, [32, None])
    sch.bind(tz, "threadIdx.z")
    sch.bind(ty, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    sch.vectorize(vec)


def tensorize_accumulation(
    sch: Schedule, acc: RV, frag_out: RV, *, ko: RV, ii: RV, bj: RV, mma: str, fill: str
) -> None:
    """Write the accumulator fragments back once per block tile (at `bj`), split their init
    off before the k loop `ko`, and run the MMAs (`ii`) and the init on tensor intrinsics:
    the last step of the WMMA, mma.sync and wgmma tilings alike."""
    sch.reverse_compute_at(frag_out, bj)
    init = sch.decompose_reduction(acc, ko)
    sch.tensorize(ii, mma)
    sch.tensorize(sch.get_loops(init)[-2], fill)


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
    acc = sch.get_block(acc_block)
    out = sch.get_block(out_block)
    t = tile_warps(sch, acc, "wmma.accumulator", warps=warps, tile=tile, tile_k=tile_k)
    for operand in (0, 1):  # operand tiles into shared memory, 16 bytes per thread and step
        tile_buf = sch.cache_read(acc, operand, "shared")
        sch.compute_at(tile_buf, t.ko)
        fetch_to_shared(sch, tile_buf, warps, tile_k, pad)
    if stages > 1:  # copies of later k steps in flight (cp.async) while this one computes
        sch.annotate(t.ko, PIPELINE_STAGES, stages)
    for loop in (t.ki, t.fi, t.fj):
        sch.unroll(loop)  # constant fragment indices keep the fragments in registers
    tensorize_accumulation(
        sch, acc, t.frag_out, ko=t.ko, ii=t.ii, bj=t.bj, mma=mma, fill="wmma_fill_f32"
    )
    write_through_shared(sch, t, out, "wmma_store_f32")
