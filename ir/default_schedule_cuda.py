"""The untuned GPU schedule every op gets: correct everywhere, simple, a baseline to beat.

* Elementwise outputs: all loops fused, 256 threads per block, one element per thread.
* Matmul-like outputs (the reduction writes a same-shape accumulator, or the output itself):
  one output element per thread, 128 threads per block; an accumulator is computed in the
  thread and kept in registers (`local`).
* Row-wise outputs (rmsnorm, layernorm, softmax: reductions over the last axis feed an
  elementwise output): one row per thread block; every reduction is computed under the
  row's blockIdx loop by all threads together (a cross-thread reduction over threadIdx.x)
  into `shared` memory, then each thread writes a strided share of the row.
"""

from __future__ import annotations

from .schedule import RV, Schedule
from .schedule_tree import blocks, reduce_loop_vars
from .stmt import BlockRealize, PrimFunc

ELEMENTWISE_THREADS = 256
MATMUL_THREADS = 128
ROW_THREADS = 256


def _row_threads(extent: object) -> int:
    """Threads per row: a power of two from 32 to 256 covering a constant row length."""
    from .expr import Const

    if not isinstance(extent, Const):
        return ROW_THREADS
    n, t = int(extent.value), 32
    while t < n and t < ROW_THREADS:
        t *= 2
    return t


def _spread(sch: Schedule, loops: list[RV], threads: int) -> RV:
    """Fuse `loops` and spread them over blocks of `threads` threads; the threadIdx loop."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    return tx


def default_cuda_schedule(func: PrimFunc) -> Schedule:
    """See the module docstring; the schedule's trace records every step."""
    sch = Schedule(func)
    realizes: list[BlockRealize] = [br for br, _ in blocks(func)]
    out = realizes[-1]
    producers = realizes[:-1]
    block = sch.get_block(out.block.name)
    loops = sch.get_loops(block)
    red = reduce_loop_vars(out)
    if red:  # the output is itself the reduction (float32 matmul-like ops)
        spatial = [lp for lp in loops if sch.get(lp).var not in red]
        _spread(sch, spatial, MATMUL_THREADS)
        return sch
    if not producers:
        _spread(sch, loops, ELEMENTWISE_THREADS)
        return sch
    out_rank = len(out.block.writes[0].buffer.shape)
    ranks = [len(br.block.writes[0].buffer.shape) for br in producers]
    if all(r == out_rank for r in ranks):  # accumulators of the output's shape
        tx = _spread(sch, loops, MATMUL_THREADS)
        for br in reversed(producers):
            sch.compute_at(sch.get_block(br.block.name), tx)
            sch.set_scope(sch.get_block(br.block.name), 0, "local")
        return sch
    threads = _row_threads(sch.get(loops[-1]).extent)
    row = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
    _, tx = sch.split(loops[-1], [None, threads])
    sch.bind(row, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    for br in reversed(producers):
        p = sch.get_block(br.block.name)
        sch.compute_at(p, row)
        sch.set_scope(p, 0, "shared")
        k = sch.get_loops(p)[-1]
        k0, k1 = sch.split(k, [None, threads])
        sch.reorder(k1, k0)
        sch.bind(k1, "threadIdx.x")
    return sch
