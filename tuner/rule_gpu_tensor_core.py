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

Small m (batched decode, short chunks: m a multiple of 16 but not of 128) gets narrow WMMA
tiles instead, so that the weight, the bytes that matter there, streams through many blocks:
SMALL_M_VARIANTS, each `tile_m x tile_n` over `warps_m x warps_n` warps with `stages` k steps
of cp.async copies in flight (16 x 32 tiles give a 4096-wide output 128 blocks).

Shapes as they come: an m no 16-row fragment divides (333 tokens) is padded first
(`pad_rows`: ir's pad_spatial on the accumulator's rows; WMMA and wgmma alike). The padded
copy of x is the shared-memory operand tile itself, its rows clamped to the last real one
as they are fetched, so padding adds no pass over global memory; only the output's write
checks the rows. Where m spans a 64- or 128-row tile (333 tokens: 384), that padding is
offered too, for the 64-row tiles, the wide tiles and wgmma.

A dense whose epilogue pairs columns (rope on q|k|v laid out [t, heads, 2, d/2], silu_mul on
gate|up laid out [t, 2, I]; `block_info.paired_output`) is claimed at its reduction on sm_90:
each wgmma tile's N columns hold N / 2 of the paired dim for both halves
(`ir.wgmma_schedule.apply_wgmma_paired_tiling`), so the epilogue reads both from the tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import read_only_buffers
from tunefleet.ir.stmt import Block, BufferRegion
from tunefleet.ir.tensorcore_schedule import (
    WMMA_MMA,
    apply_wmma_paired_tiling,
    apply_wmma_tiling,
)
from tunefleet.ir.wgmma_schedule import TILE_K as WGMMA_TILE_K
from tunefleet.ir.wgmma_schedule import apply_wgmma_paired_tiling, apply_wgmma_tiling

from .block_info import is_reduction, loop_infos, paired_output, reduced_output
from .space import ScheduleRule, SpaceContext, try_fork

TILE = 128
WARPS = ((2, 2), (2, 4), (4, 2))
TILE_KS = (32, 64)
PADS = (8, 0)
# (warpgroups, N, stages): 128 x 128 with 3 stages measured fastest on an H100 (2 blocks/SM)
WGMMA_VARIANTS = ((2, 128, 3), (2, 128, 2), (1, 128, 3), (1, 128, 4), (1, 256, 2), (2, 64, 4))
# (tile_m, tile_n, warps, tile_k, stages) for m % TILE != 0: each warp one or two 16 x 16
# fragments per row of tiles, enough stages to keep a multiprocessor's share of the weight
# in flight with one or two blocks on it. A 4096-wide output in 32-column tiles is 128
# blocks, about one per multiprocessor of an H100, so those tiles also come with 48 KiB of
# k steps in flight (what one multiprocessor must have outstanding to draw its share of
# 3 TB/s); at 32 and 64 rows a warp per 16 rows keeps the weight read once per block.
# Four 16-row tiles at most: with the twelve 128-row ones of a padded m (333 -> 384, 2000
# -> 2048) they fill the space's 16 sketches.
SMALL_M_VARIANTS = (
    (16, 32, (1, 2), 64, 4),
    (16, 32, (1, 2), 128, 4),
    (16, 64, (1, 2), 64, 4),
    (16, 64, (1, 4), 128, 3),
    (32, 32, (2, 1), 128, 4),
    (32, 64, (2, 2), 64, 4),
    (64, 32, (4, 1), 64, 4),
    (64, 32, (4, 1), 128, 3),
    (64, 64, (2, 2), 64, 3),
)
SMALL_M_PAD = 8


class GpuTensorCore(ScheduleRule):
    """WMMA tiling with shared-memory staging for large fp16/bf16 dense outputs."""

    name = "gpu_tensor_core"
    # 2: wgmma for the paired epilogues (rope, gate|up); 3: small-m tiles, paired too;
    # 4: rows no fragment divides (333 tokens) padded to the tile (pad_spatial);
    # 5: deeper k pipelines and a warp per 16 rows at small m
    version = 5

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if ctx.is_gpu and is_reduction(sch.func, block):
            return _paired(sch, block, hopper=ctx.arch == "sm_90")
        found = reduced_output(sch, block) if ctx.is_gpu else None
        if found is None or len(found.producers) != 1:
            return []
        probe, producers = found.probe, found.producers
        acc_block = probe.get(producers[0])
        acc_name = acc_block.name
        dtypes = {r.buffer.dtype for r in acc_block.reads if r.buffer in probe.func.inputs}
        if len(dtypes) != 1 or next(iter(dtypes)) not in WMMA_MMA:
            return []
        loops = loop_infos(probe, producers[0])
        if len(loops) != 3 or [lp.reduce for lp in loops] != [False, False, True]:
            return []
        m, n, k = (lp.extent for lp in loops)
        if m is None or n is None or k is None:
            return []
        dtype = next(iter(dtypes))
        forks: list[Schedule] = []
        for pad_m in row_paddings(m):
            fit = _Fit(block, acc_name, dtype, (m + pad_m, n, k), pad_m)
            forks += _plain_forks(sch, fit, ctx, dense=_is_dense(probe, acc_block))
        return forks


def row_paddings(m: int) -> list[int]:
    """Rows to add: to an m no fragment divides (333 tokens: 3, to 336, for 16-row tiles),
    and to the next multiple of 64 and of 128 where m spans such a tile or reaching it costs
    at most 1/16 of m (333: 51, to 384; 2000: 48), so that a few hundred tokens also get the
    wide tiles and wgmma: 16-row tiles re-read the weight once per 16 rows (333 tokens on an
    H100: 165 us against F.linear's 21)."""
    pads = [-m % 16]
    for tile in (64, TILE):
        pad = -m % tile
        if pad not in pads and (m >= tile or pad * 16 <= m):
            pads.append(pad)
    return pads


@dataclass(frozen=True)
class _Fit:
    """One output's tiling problem: its blocks, operand dtype, and the (padded) extents."""

    block: str
    acc: str
    dtype: str
    mnk: tuple[int, int, int]  # m padded by pad_m
    pad_m: int


def _plain_forks(sch: Schedule, fit: _Fit, ctx: SpaceContext, *, dense: bool) -> list[Schedule]:
    """The tensor-core forks of one padding of a plain (unpaired) output: wgmma on sm_90,
    narrow WMMA tiles off the 128 grid, else 128 x 128 WMMA tiles."""
    m, n, k = fit.mnk
    hopper: list[Schedule] = []
    if ctx.arch == "sm_90" and dense and k % WGMMA_TILE_K == 0:
        for wg, tn, st in WGMMA_VARIANTS:
            if m % (64 * wg) or n % tn:
                continue
            kw = {"warpgroups": wg, "n": tn, "stages": st}
            made = try_fork(sch, lambda t, kw=kw: _wgmma(t, fit, **kw))
            if made is not None:
                hopper.append(made)
        if hopper and m % TILE == 0:
            return hopper
    if m % TILE:  # 64 x N wgmma tiles leave most multiprocessors idle at small m
        return hopper + _small_m(sch, fit)
    if n % TILE:
        return []
    out_forks = []
    for warps in WARPS:
        for tile_k in TILE_KS:
            if k % tile_k:
                continue
            for pad in PADS:
                wide = {"warps": warps, "tile": (TILE, TILE), "tile_k": tile_k, "pad": pad}
                made = try_fork(sch, lambda t, kw=wide: _wmma(t, fit, **kw))
                if made is not None:
                    out_forks.append(made)
    return out_forks


def _small_m(sch: Schedule, fit: _Fit) -> list[Schedule]:
    """The SMALL_M_VARIANTS forks whose tiles divide the padded (m, n, k); [] where none does."""
    m, n, k = fit.mnk
    forks = []
    for tm, tn, warps, tk, stages in SMALL_M_VARIANTS:
        if m % tm or n % tn or k % tk:
            continue
        narrow = {"warps": warps, "tile": (tm, tn), "tile_k": tk, "stages": stages}
        made = try_fork(sch, lambda t, kw=narrow: _wmma(t, fit, pad=SMALL_M_PAD, **kw))
        if made is not None:
            forks.append(made)
    return forks


def _wmma(t: Schedule, fit: _Fit, **tiling: Any) -> None:
    """Pad the accumulator's rows (when the fit asks), then the WMMA tiling."""
    copies = pad_rows(t, fit.acc, fit.pad_m)
    mma = WMMA_MMA[fit.dtype]
    apply_wmma_tiling(t, fit.block, fit.acc, mma, operand_copies=copies, **tiling)


def _wgmma(t: Schedule, fit: _Fit, **tiling: Any) -> None:
    """Pad the accumulator's rows (when the fit asks), then the wgmma tiling."""
    copies = pad_rows(t, fit.acc, fit.pad_m)
    apply_wgmma_tiling(t, fit.block, fit.acc, fit.dtype, operand_copies=copies, **tiling)


def pad_rows(t: Schedule, acc: str, pad_m: int) -> tuple[str | None, str | None]:
    """Grow `acc`'s first axis by `pad_m` rows (pad_spatial) and let its consumer read the
    padded accumulator directly; returns, per operand of `acc`, the name of its padded copy
    (None for an operand the rows do not index, and both None when `pad_m` is 0: nothing
    is padded), which the tiling moves into shared memory."""
    if not pad_m:
        return None, None
    acc_rv = t.get_block(acc)
    counts = [pad_m] + [0] * (len(t.get(acc_rv).iter_vars) - 1)
    *copies, back = t.pad_spatial(acc_rv, counts)
    t.compute_inline(back)
    operands = read_only_buffers(t.get(acc_rv))
    names: list[str | None] = [None] * len(operands)
    for copy in copies:
        block = t.get(copy)
        names[operands.index(block.writes[0].buffer)] = block.name
    first, second = names
    return first, second


def _paired(sch: Schedule, block: str, *, hopper: bool) -> list[Schedule]:
    """The forks of reduction `block` feeding an epilogue that reads a 2-wide pair axis
    whole: wgmma tiles on sm_90 (`hopper`), narrow WMMA tiles at small m; [] where it is not
    such a dense or its sizes fit no variant."""
    found = paired_output(sch, block)
    if found is None or len(found.pair_axes) != 1:
        return []
    acc_block = found.probe.get(found.acc)
    dtypes = {r.buffer.dtype for r in acc_block.reads if r.buffer in found.probe.func.inputs}
    loops = loop_infos(found.probe, found.acc)
    if len(dtypes) != 1 or next(iter(dtypes)) not in WMMA_MMA or len(loops) < 4:
        return []
    pair = found.pair_axes[0]
    kinds = [lp.reduce for lp in loops]
    extents = [lp.extent for lp in loops]
    if kinds != [False] * (len(loops) - 1) + [True] or None in extents:
        return []
    if (
        not 1 <= pair < len(loops) - 2
        or extents[pair] != 2
        or not _is_k_major(found.probe, acc_block)
    ):
        return []
    m, j, k = extents[0], extents[-2], extents[-1]
    assert m is not None and j is not None and k is not None
    out_name = found.probe.get(found.out).name
    dtype = next(iter(dtypes))
    forks = []
    for pad_m in row_paddings(m):
        rows = m + pad_m

        def tiled(t: Schedule, tiling: Any, pm: int = pad_m, **kw: Any) -> None:
            copies = pad_rows(t, block, pm)
            tiling(t, out_name, block, operand_copies=copies, pair=pair - 1, **kw)

        for tm, tn, warps, tk, stages in SMALL_M_VARIANTS if rows % TILE else ():
            if rows % tm or j % (tn // 2) or k % tk or warps[1] % 2:
                continue
            narrow = {"warps": warps, "tile": (tm, tn), "tile_k": tk, "stages": stages}
            made = try_fork(
                sch,
                lambda t, kw=narrow, f=tiled: f(
                    t, apply_wmma_paired_tiling, mma=WMMA_MMA[dtype], pad=SMALL_M_PAD, **kw
                ),
            )
            if made is not None:
                forks.append(made)
        for wg, tn, st in WGMMA_VARIANTS if hopper else ():
            if rows % (64 * wg) or j % (tn // 2) or k % WGMMA_TILE_K:
                continue
            wide = {"dtype": dtype, "warpgroups": wg, "n": tn, "stages": st}
            made = try_fork(sch, lambda t, kw=wide, f=tiled: f(t, apply_wgmma_paired_tiling, **kw))
            if made is not None:
                forks.append(made)
    return forks


def _is_k_major(sch: Schedule, blk: Block) -> bool:
    """Whether `blk` reads a[i, k] and b[..., k]: two inputs, both with the reduction var
    last, the first indexed by the block's first axis and k alone."""
    ins = _k_last_inputs(sch, blk)
    axes = [iv.var for iv in blk.iter_vars]
    return any([rg.min for rg in r.region] == [axes[0], axes[-1]] for r in ins)


def _is_dense(sch: Schedule, blk: Block) -> bool:
    """Whether `blk` reads a[i, k] and b[j, k] (both k-major), as wgmma's tiling needs."""
    ins = _k_last_inputs(sch, blk)
    return bool(ins) and all(len(r.region) == 2 for r in ins)


def _k_last_inputs(sch: Schedule, blk: Block) -> list[BufferRegion]:
    """`blk`'s two function-input reads if both index the block's last (reduction) var in
    their last dim, else []: what both wgmma tilings need of their operands."""
    ins = [r for r in blk.reads if r.buffer in sch.func.inputs]
    last = blk.iter_vars[-1].var
    if len(ins) != 2 or any(r.region[-1].min != last for r in ins):
        return []
    return ins
