"""GPU tensor-core tiling for fp16/bf16 dense and matmul-shaped outputs (sm_80+).

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

from .block_info import is_reduction, loop_infos, writes_output
from .space import ScheduleRule, SpaceContext, try_fork

TILE = 128
WARPS = ((2, 2), (2, 4), (4, 2))
TILE_KS = (32, 64)
PADS = (8, 0)
MMA = {"float16": "wmma_mma_f16_f32", "bfloat16": "wmma_mma_bf16_f32"}


class GpuTensorCore(ScheduleRule):
    """WMMA tiling with shared-memory staging for large fp16/bf16 dense outputs."""

    name = "gpu_tensor_core"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if ctx.target_kind != "cuda" or is_reduction(sch.func, block):
            return []
        if not writes_output(sch.func, block):
            return []
        probe = sch.copy()
        out = probe.get_block(block)
        producers = probe.get_producers(out)
        if len(producers) != 1:
            return []
        acc_block = probe.get(producers[0])
        acc_name = acc_block.name
        if not is_reduction(probe.func, acc_name):
            return []
        dtypes = {r.buffer.dtype for r in acc_block.reads if r.buffer in probe.func.inputs}
        if len(dtypes) != 1 or next(iter(dtypes)) not in MMA:
            return []
        mma = MMA[next(iter(dtypes))]
        loops = loop_infos(probe, producers[0])
        if len(loops) != 3 or [lp.reduce for lp in loops] != [False, False, True]:
            return []
        m, n, k = (lp.extent for lp in loops)
        if m is None or n is None or k is None or m % TILE or n % TILE:
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


def _build(
    t: Schedule, block: str, acc_name: str, mma: str, warps: tuple[int, int], tile_k: int, pad: int
) -> None:
    warps_m, warps_n = warps
    acc = t.get_block(acc_name)
    out = t.get_block(block)
    frag_out = t.cache_write(acc, 0, "wmma.accumulator")
    i, j, kk = t.get_loops(acc)
    frags_m, frags_n = TILE // warps_m // 16, TILE // warps_n // 16
    bi, wi, fi, ii = t.split(i, [None, warps_m, frags_m, 16])
    bj, wj, fj, jj = t.split(j, [None, warps_n, frags_n, 16])
    ko, ki, kx = t.split(kk, [None, tile_k // 16, 16])
    t.reorder(bi, bj, ko, wi, wj, ki, fi, fj, ii, jj, kx)
    t.bind(bi, "blockIdx.y")
    t.bind(bj, "blockIdx.x")
    t.bind(wi, "threadIdx.z")
    t.bind(wj, "threadIdx.y")
    for operand in (0, 1):  # x and w tiles into shared memory, 16 bytes per thread and step
        tile = t.cache_read(acc, operand, "shared")
        t.compute_at(tile, ko)
        if pad:
            t.storage_align(tile, 0, 0, tile_k, pad)
        rows, cols = t.get_loops(tile)[-2:]
        _, tz, ty, r = t.split(rows, [None, warps_m, warps_n, 32 // (tile_k // 8)])
        c, vec = t.split(cols, [None, 8])
        lane = t.fuse(r, c)
        t.bind(tz, "threadIdx.z")
        t.bind(ty, "threadIdx.y")
        t.bind(lane, "threadIdx.x")
        t.vectorize(vec)
    for loop in (ki, fi, fj):
        t.unroll(loop)
    t.reverse_compute_at(frag_out, bj)
    init = t.decompose_reduction(acc, ko)
    t.tensorize(ii, mma)
    t.tensorize(t.get_loops(init)[-2], "wmma_fill_f32")
    t.set_scope(frag_out, 0, "shared")
    rows, cols = t.get_loops(frag_out)[-2:]
    t0, f0, i0 = t.split(rows, [warps_m, frags_m, 16])
    t1, f1, i1 = t.split(cols, [warps_n, frags_n, 16])
    t.reorder(t0, t1, f0, f1, i0, i1)
    t.bind(t0, "threadIdx.z")
    t.bind(t1, "threadIdx.y")
    t.unroll(f0)
    t.unroll(f1)
    t.tensorize(i0, "wmma_store_f32")
    t.reverse_compute_at(out, bj)
    rows, cols = t.get_loops(out)[-2:]
    _, tz, ty = t.split(rows, [None, warps_m, warps_n])
    lane, vec = t.split(cols, [32, None])
    t.bind(tz, "threadIdx.z")
    t.bind(ty, "threadIdx.y")
    t.bind(lane, "threadIdx.x")
    t.vectorize(vec)
