"""Hand-written tensor-core schedules for fp16 / bf16 dense (prefill GEMM): mma.sync and WMMA.

    python examples/dense_tensorcore_cuda.py               # the mma.sync kernel and its launch
    python examples/dense_tensorcore_cuda.py --kind wmma   # the WMMA kernel
    python examples/dense_tensorcore_cuda.py --show-ir     # the scheduled IR
    python bench/gpu_kernels.py                            # checks and times them against torch

y[i, j] = sum_k x[i, k] * w[j, k]. `dense_mma_schedule` (the default, the fastest measured):
each thread block computes a 256 x 128 tile of y with 8 warps (4 x 2, bound to threadIdx.z /
threadIdx.y), each warp a 64 x 64 tile held in per-lane registers (`mma.accumulator`, 16
tiles of 8 floats per lane). For every 64-wide step of k the block's threads copy the 256 x 64
and 128 x 64 tiles of x and w into shared memory, 16 bytes per thread and copy, with rows
padded by 8 halves (storage_align); the k loop is annotated `software_pipeline_stages = 4`, so
the copies of the next three steps run as `cp.async` while the warps compute on the current
one. For every 16-wide step inside it each warp loads its 4 x and 4 w 16 x 16 tiles into
registers with `ldmatrix.x4` (`mma.matrix_a` / `mma.matrix_b` buffers) and runs 4 x 4 x 2
`mma.sync.m16n8k16` from them; `software_pipeline_fragments` double-buffers those registers,
so the next step's ldmatrix run during this step's MMAs and the block's barrier comes before
the last step, whose MMAs are ready to issue right after it. At the end each lane stores its
accumulators as float2 pairs into a shared float32 tile (rows padded by 8 floats, reusing the
bytes of the x / w tiles), and all threads convert it to fp16 and write it out.

`dense_tc_schedule` is the same structure through the WMMA API (fragments reloaded from
shared memory for every MMA). Measured numbers: docs/ir.md and bench/gpu_kernels_results.md.
`raster=G` runs the blocks in groups of G row tiles (`block_rasterize`); it measured no gain
here (the 48 MB of operands stay in the 50 MB L2 either way), so it is off by default.
Not used yet: swizzled shared layouts, wgmma / TMA (sm_90a).
"""

from __future__ import annotations

import argparse

from tunefleet.ir import Schedule, build_source, ops
from tunefleet.ir.annotation_keys import BLOCK_RASTERIZE, PIPELINE_FRAGMENTS, PIPELINE_STAGES
from tunefleet.ir.tensorcore_schedule import (
    WMMA_MMA,
    apply_wmma_tiling,
    fetch_to_shared,
    tensorize_accumulation,
    tile_warps,
    write_through_shared,
)

TILE_M, TILE_N, TILE_K = 128, 128, 64
WARPS_M, WARPS_N = 2, 4
STAGES = 3


def dense_tc_schedule(
    m: int = 2048,
    n: int = 4096,
    k: int = 4096,
    dtype: str = "float16",
    tile_k: int = TILE_K,
    pad: int = 8,
    warps: tuple[int, int] = (WARPS_M, WARPS_N),
    stages: int = STAGES,
    tile: tuple[int, int] = (TILE_M, TILE_N),
) -> Schedule:
    """dense(x[m, k], w[n, k]) on tensor cores; m, n multiples of `tile` and k of `tile_k`.

    `pad` halves are added to each row of the shared x and w tiles (storage_align) so the
    16 rows a fragment load reads start in different banks. `warps` lays the block's warps
    out over its `tile` of y (rows, columns); each warp holds its share in fragments.
    `stages` > 1 software-pipelines the k loop: that many shared copies of each tile, the
    copies of the next stages - 1 k steps in flight (cp.async) during the MMAs.
    """
    func = ops.get_op("dense").build({"m": m, "n": n, "k": k}, dtype)
    sch = Schedule(func)
    apply_wmma_tiling(
        sch, "dense", "dense_acc", WMMA_MMA[dtype],
        warps=warps, tile=tile, tile_k=tile_k, pad=pad, stages=stages,
    )  # fmt: skip
    return sch


MMA_TILE = (256, 128)
MMA_WARPS = (4, 2)
MMA_TILE_K = 64
MMA_STAGES = 4
MMA_OUT_PAD = 8
MMA_PREFETCH = True
MMA_RASTER = 0


def dense_mma_schedule(
    m: int = 2048,
    n: int = 4096,
    k: int = 4096,
    dtype: str = "float16",
    tile_k: int = MMA_TILE_K,
    pad: int = 8,
    warps: tuple[int, int] = MMA_WARPS,
    stages: int = MMA_STAGES,
    tile: tuple[int, int] = MMA_TILE,
    op: str = "dense",
    out_pad: int = MMA_OUT_PAD,
    prefetch: bool = MMA_PREFETCH,
    raster: int = MMA_RASTER,
) -> Schedule:
    """dense(x[m, k], w[n, k]) with mma.sync m16n8k16 and ldmatrix register fragments.

    As `dense_tc_schedule`, but for every 16-wide step of k each warp loads its x rows and
    its w rows once into registers (`mma.matrix_a` / `mma.matrix_b`, one ldmatrix.x4 per
    16 x 16 tile) and runs all frags_m x frags_n MMAs of its warp tile from them: a 64 x 64
    warp tile costs 8 ldmatrix per 32 mma.sync. Padding the shared rows by 8 halves puts
    the 8 rows of each ldmatrix quarter in distinct banks. `op="matmul"` schedules
    a[m, k] . b[k, n] the same way: its b tiles are k-major, loaded with ldmatrix .trans.
    `prefetch` (applied with stages > 1 and an even number of 16-wide steps per k tile)
    loads each step's fragments one step ahead into a second register copy; `raster` > 0
    groups the blocks by that many row tiles.
    """
    func = ops.get_op(op).build({"m": m, "n": n, "k": k}, dtype)
    mma = {"float16": "mma_m16n8k16_f16_f32", "bfloat16": "mma_m16n8k16_bf16_f32"}[dtype]
    sch = Schedule(func)
    acc = sch.get_block(f"{op}_acc")
    out = sch.get_block(op)
    t = tile_warps(sch, acc, "mma.accumulator", warps=warps, tile=tile, tile_k=tile_k)
    if raster:  # blocks run in groups of `raster` row tiles, column by column (L2 reuse)
        sch.annotate(t.bi, BLOCK_RASTERIZE, raster)
    for operand, (scope, intrin) in enumerate(
        (("mma.matrix_a", "ldmatrix_a_x4"), ("mma.matrix_b", "ldmatrix_b_x4"))
    ):
        # this warp's rows of the tile into registers, once per 16-wide k step...
        frag = sch.cache_read(acc, operand, scope)
        sch.compute_at(frag, t.ki)
        rows, cols = sch.get_loops(frag)[-2:]
        if op == "matmul" and operand == 1:  # b[k, n]: 16-wide n tiles, n outside k
            f, r = sch.split(cols, [None, 16])
            sch.reorder(f, r, rows)
        else:
            f, r = sch.split(rows, [None, 16])
        sch.unroll(f)
        # ...from the block's tile in shared memory, 16 bytes per thread and copy
        tile_rv = sch.cache_read(frag, 0, "shared")
        sch.tensorize(r, intrin)
        sch.compute_at(tile_rv, t.ko)
        row_len = sch.get(sch.get_loops(tile_rv)[-1]).extent.value  # type: ignore[attr-defined]
        fetch_to_shared(sch, tile_rv, t.ko, warps, row_len, pad)
    if stages > 1:  # copies of later k steps in flight (cp.async) while this one computes
        sch.annotate(t.ko, PIPELINE_STAGES, stages)
        if prefetch and tile_k // 16 % 2 == 0:  # next 16-wide step's fragments during the MMAs
            sch.annotate(t.ko, PIPELINE_FRAGMENTS, 1)
    for loop in (t.ki, t.fi, t.fj):
        sch.unroll(loop)  # constant fragment indices keep the fragments in registers
    tensorize_accumulation(
        sch, acc, t.frag_out, ko=t.ko, ii=t.ii, bj=t.bj, mma=mma, fill="mma_fill_f32"
    )
    # padded rows of the staged float32 tile: the lanes' 8-byte stores avoid bank conflicts
    write_through_shared(sch, t, out, "mma_store_f32", row_len=tile[1], pad=out_pad)
    return sch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--kind", default="mma", choices=["mma", "wmma"])
    parser.add_argument("--show-ir", action="store_true")
    args = parser.parse_args()
    schedule = dense_mma_schedule if args.kind == "mma" else dense_tc_schedule
    sch = schedule(args.m, args.n, args.k, args.dtype)
    if args.show_ir:
        print(sch.func.script())
    else:
        ks = build_source(sch, target="cuda")
        print(ks.source)
        print(ks.launch_comment)


if __name__ == "__main__":
    main()
