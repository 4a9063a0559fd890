"""GPU tensor-core tiling for fp16/bf16 dense and matmul-shaped outputs (sm_80+; wgmma on sm_90).

On sm_90 targets a dense x[m, k] . w[n, k] whose sizes fit gets Hopper warpgroup-MMA
sketches instead (ir.wgmma_schedule: 64 x N register tiles per warpgroup, cp.async into
128-byte swizzled shared tiles, `stages` in flight): the block shapes and stage counts in
WGMMA_VARIANTS, all within the postprocessor's 99 KiB of shared memory so that two blocks
share a multiprocessor where they can. Everything else, and every other arch, gets WMMA:

A 128 x 128 tile of the float32 accumulator per block, its warps laid out `warps_m x
warps_n`, each warp holding 16 x 16 WMMA fragments; per `tile_k` step of k the x and w tiles
are fetched cooperatively into shared memory (16 bytes per thread, rows padded by `pad`
halves with storage_align so fragment loads avoid bank conflicts), the MMAs run on tensor
cores (`tensorize`), and the tile goes back through shared memory to the fp16 output. The
variants are structural (split factors), so each is its own sketch: warps in {2x2, 2x4, 4x2},
tile_k in {32, 64}, pad in {0, 8}.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule
from tunefleet.ir.stmt import Block
from tunefleet.ir.tensorcore_schedule import WMMA_MMA, apply_wmma_tiling
from tunefleet.ir.wgmma_schedule import TILE_K as WGMMA_TILE_K
from tunefleet.ir.wgmma_schedule import apply_wgmma_tiling

from .block_info import loop_infos, reduced_output
from .space import ScheduleRule, SpaceContext, try_fork

TILE = 128
WARPS = ((2, 2), (2, 4), (4, 2))
TILE_KS = (32, 64)
PADS = (8, 0)
# (warpgroups, N, stages): 128 x 128 with 3 stages measured fastest on an H100 (2 blocks/SM)
WGMMA_VARIANTS = ((2, 128, 3), (2, 128, 2), (1, 128, 3), (1, 128, 4), (1, 256, 2), (2, 64, 4))


class GpuTensorCore(ScheduleRule):
    """WMMA tiling with shared-memory staging for large fp16/bf16 dense outputs."""

    name = "gpu_tensor_core"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        found = reduced_output(sch, block) if ctx.is_gpu else None
        if found is None or len(found.producers) != 1:
            return []
        probe, producers = found.probe, found.producers
        acc_block = probe.get(producers[0])
        acc_name = acc_block.name
        dtypes = {r.buffer.dtype for r in acc_block.reads if r.buffer in probe.func.inputs}
        if len(dtypes) != 1 or next(iter(dtypes)) not in WMMA_MMA:
            return []
        mma = WMMA_MMA[next(iter(dtypes))]
        loops = loop_infos(probe, producers[0])
        if len(loops) != 3 or [lp.reduce for lp in loops] != [False, False, True]:
            return []
        m, n, k = (lp.extent for lp in loops)
        if m is None or n is None or k is None:
            return []
        dtype = next(iter(dtypes))
        if ctx.arch == "sm_90" and _is_dense(probe, acc_block) and k % WGMMA_TILE_K == 0:
            hopper = [
                made
                for wg, tn, st in WGMMA_VARIANTS
                if m % (64 * wg) == 0 and n % tn == 0
                for made in [
                    try_fork(
                        sch,
                        lambda t, wg=wg, tn=tn, st=st: apply_wgmma_tiling(
                            t, block, acc_name, dtype, warpgroups=wg, n=tn, stages=st
                        ),
                    )
                ]
                if made is not None
            ]
            if hopper:
                return hopper
        if m % TILE or n % TILE:
            return []
        out_forks = []
        for warps in WARPS:
            for tile_k in TILE_KS:
                if k % tile_k:
                    continue
                for pad in PADS:
                    made = try_fork(
                        sch,
                        lambda t, w=warps, tk=tile_k, p=pad: _build(
                            t, block, acc_name, mma, w, tk, p
                        ),
                    )
                    if made is not None:
                        out_forks.append(made)
        return out_forks


def _is_dense(sch: Schedule, blk: Block) -> bool:
    """Whether `blk` reads a[i, k] and b[j, k] (both k-major), as wgmma's tiling needs."""
    ins = [r for r in blk.reads if r.buffer in sch.func.inputs]
    if len(ins) != 2:
        return False
    acc_vars = [iv.var for iv in blk.iter_vars]
    for r in ins:
        last = r.region[-1].min
        if not (len(r.region) == 2 and last == acc_vars[-1]):
            return False
    return True


def _build(
    t: Schedule, block: str, acc_name: str, mma: str, warps: tuple[int, int], tile_k: int, pad: int
) -> None:
    apply_wmma_tiling(
        t, block, acc_name, mma, warps=warps, tile=(TILE, TILE), tile_k=tile_k, pad=pad
    )
