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
from .errors import ScheduleError
from .expr import Const
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
    sch: Schedule, tile: RV, at: RV, warps: tuple[int, int], row_len: int, pad: int
) -> None:
    """Copy a shared operand tile (already computed at its k step `at`) with all warps, 16
    bytes per thread.

    Rows of `row_len` elements are padded by `pad` (storage_align) so that fragment loads of
    16 rows hit distinct banks; each warp copies whole rows, 32 lanes over rows x 16-byte
    chunks, the chunk vectorized. A tile of higher rank (the paired tiling's `[2, j, k]`)
    fuses its leading dims into the rows.
    """
    warps_m, warps_n = warps
    if pad:
        rank = len(sch.get(tile).writes[0].buffer.shape)
        sch.storage_align(tile, 0, rank - 2, row_len, pad)
    *lead, cols = [lp for lp in loops_under(sch, tile, at) if _const(sch, lp) != 1]
    rows = sch.fuse(*lead) if len(lead) > 1 else lead[0]
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


def shared_operand(sch: Schedule, acc: RV, operand: int, copy: str | None) -> RV:
    """The block that fills operand `operand` of `acc` in shared memory: its named `copy`
    moved to shared scope, or else a new cache_read of the input."""
    if copy is None:
        return sch.cache_read(acc, operand, "shared")
    tile = sch.get_block(copy)
    sch.set_scope(tile, 0, "shared")
    return tile


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
    operand_copies: tuple[str | None, str | None] = (None, None),
) -> None:
    """Tile `acc_block` (loops i, j, k) onto tensor cores and write `out_block` from it.

    An operand whose copy block is named in `operand_copies` (pad_spatial's edge-padded
    copy of x) is fetched by that block, moved into shared memory, instead of a cache_read:
    padded rows then cost a clamped row index in the fetch, not a copy in global memory.
    Every step is a recorded schedule primitive, so the result replays from its trace.
    """
    acc = sch.get_block(acc_block)
    out = sch.get_block(out_block)
    t = tile_warps(sch, acc, "wmma.accumulator", warps=warps, tile=tile, tile_k=tile_k)
    for operand in (0, 1):  # operand tiles into shared memory, 16 bytes per thread and step
        tile_buf = shared_operand(sch, acc, operand, operand_copies[operand])
        sch.compute_at(tile_buf, t.ko)
        fetch_to_shared(sch, tile_buf, t.ko, warps, tile_k, pad)
    if stages > 1:  # copies of later k steps in flight (cp.async) while this one computes
        sch.annotate(t.ko, PIPELINE_STAGES, stages)
    for loop in (t.ki, t.fi, t.fj):
        sch.unroll(loop)  # constant fragment indices keep the fragments in registers
    tensorize_accumulation(
        sch, acc, t.frag_out, ko=t.ko, ii=t.ii, bj=t.bj, mma=mma, fill="wmma_fill_f32"
    )
    write_through_shared(sch, t, out, "wmma_store_f32")


def apply_wmma_paired_tiling(
    sch: Schedule,
    out_block: str,
    acc_block: str,
    mma: str,
    *,
    pair: int,
    warps: tuple[int, int],
    tile: tuple[int, int],
    tile_k: int,
    pad: int,
    stages: int,
    operand_copies: tuple[str | None, str | None] = (None, None),
) -> None:
    """Tile `acc_block` (loops i, outer..., p, j, k; p the 2-wide pair axis at spatial
    position `pair`, j last) onto WMMA fragments whose block tile holds `tile[1] / 2` columns
    of j for both p, and write `out_block`, which reads both halves, from the shared tile.

        acc[i, p, j] += x[i, k] * w[p, j, k]; out[i, j] = silu(acc[i, 0, j]) * acc[i, 1, j]
        -> block (bi, bj), warp (wi, p * warps_n / 2 + wj): 16 x 16 fragments of rows i and
           columns j of half p; out[i, j in bj's tile / 2] from the float32 tile in shared

    Half the warps along n work on each half, so a fragment never spans the pair. m must be
    a multiple of tile[0], j's extent of tile[1] / 2, k of tile_k; warps[1] even.
    `operand_copies` as in apply_wmma_tiling.
    """
    warps_m, warps_n = warps
    if warps_n % 2 or tile[1] % (8 * warps_n) or tile[0] % (16 * warps_m):
        raise ScheduleError(
            f"wmma paired tiling: warps {warps} do not split a {tile[0]} x {tile[1]} tile into "
            "16 x 16 fragments, half the warps along n per half"
        )
    acc = sch.get_block(acc_block)
    out = sch.get_block(out_block)
    frag_out = sch.cache_write(acc, 0, "wmma.accumulator")
    i, outer, p, j, kk = pair_loops(sch, acc, pair, "wmma paired tiling")
    half_warps = warps_n // 2
    frags = (tile[0] // warps_m // 16, tile[1] // 2 // half_warps // 16)
    bi, wi, fi, ii = sch.split(i, [None, warps_m, frags[0], 16])
    bj, wj, fj, jj = sch.split(j, [None, half_warps, frags[1], 16])
    ko, ki, kx = sch.split(kk, [None, tile_k // 16, 16])
    sch.reorder(bi, *outer, bj, ko, wi, p, wj, ki, fi, fj, ii, jj, kx)
    bx = sch.fuse(*outer, bj) if outer else bj
    sch.bind(bi, "blockIdx.y")
    sch.bind(bx, "blockIdx.x")
    sch.bind(wi, "threadIdx.z")
    for operand in (0, 1):  # operand tiles into shared memory, 16 bytes per thread and step
        tile_buf = shared_operand(sch, acc, operand, operand_copies[operand])
        sch.compute_at(tile_buf, ko)
        fetch_to_shared(sch, tile_buf, ko, warps, tile_k, pad)
    if stages > 1:
        sch.annotate(ko, PIPELINE_STAGES, stages)
    for loop in (ki, fi, fj):
        sch.unroll(loop)
    # the tiles move while p and wj still index the buffers directly; then they fuse
    sch.reverse_compute_at(frag_out, bx)
    sch.bind(sch.fuse(p, wj), "threadIdx.y")
    init = sch.decompose_reduction(acc, ko)
    sch.tensorize(ii, mma)
    sch.tensorize(sch.get_loops(init)[-2], "wmma_fill_f32")
    # the float32 tile in shared memory: each warp stores its own fragments
    sch.set_scope(frag_out, 0, "shared")
    rows, *cols = [lp for lp in loops_under(sch, frag_out, bx) if _const(sch, lp) != 1]
    hp, col = cols[-2], cols[-1]
    t0, f0, i0 = sch.split(rows, [warps_m, frags[0], 16])
    t1, f1, i1 = sch.split(col, [half_warps, frags[1], 16])
    sch.reorder(t0, hp, t1, f0, f1, i0, i1)
    sch.bind(t0, "threadIdx.z")
    sch.unroll(f0)
    sch.unroll(f1)
    sch.tensorize(i0, "wmma_store_f32")
    sch.reverse_compute_at(out, bx)
    sch.bind(sch.fuse(hp, t1), "threadIdx.y")
    # the epilogue from the tile: rows over the warps, the rest of a row over the lanes
    rows, *rest = [lp for lp in loops_under(sch, out, bx) if _const(sch, lp) != 1]
    _, tz, ty = sch.split(rows, [None, warps_m, warps_n])
    lane = sch.fuse(*rest) if len(rest) > 1 else rest[0]
    lane, _ = sch.split(lane, [32, None])
    sch.bind(tz, "threadIdx.z")
    sch.bind(ty, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")


def loops_under(sch: Schedule, block: RV, loop: RV) -> list[RV]:
    """The loops of `block` nested inside `loop`."""
    loops = sch.get_loops(block)
    at = next(k for k, lp in enumerate(loops) if sch.get(lp) is sch.get(loop))
    return loops[at + 1 :]


def pair_loops(sch: Schedule, acc: RV, pair: int, who: str) -> tuple[RV, list[RV], RV, RV, RV]:
    """The loops (i, outer, p, j, k) of a paired accumulator `acc[i, outer..., p, j] += ...`
    with the 2-wide pair axis at spatial position `pair` (before j): what both paired
    tilings split."""
    i, *spatial, kk = sch.get_loops(acc)
    if not 0 <= pair < len(spatial) - 1:
        raise ScheduleError(
            f"{who}: pair axis {pair} must be a spatial loop of {sch.get(acc).name} "
            "before its last one"
        )
    p, j = spatial[pair], spatial[-1]
    return i, [lp for lp in spatial[:-1] if lp is not p], p, j, kk


def _const(sch: Schedule, loop: RV) -> int | None:
    """A loop's extent where it is a constant, else None."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, Const) else None
