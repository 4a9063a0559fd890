"""The untuned GPU schedule every op gets: correct everywhere, simple, a baseline to beat.

* Elementwise outputs: all loops fused, 256 threads per block, one element per thread.
* Matmul-like outputs (the reduction writes a same-shape accumulator, or the output itself):
  one output element per thread, 128 threads per block; an accumulator is computed in the
  thread and kept in registers (`local`).
* Row-wise outputs (rmsnorm, layernorm, softmax, attention: producers of other shapes feed
  the output): one row per thread block, the row being every spatial loop of the output but
  its last. Each producer is computed under the row's blockIdx loop into `shared` memory:
  its threads spread over its largest remaining spatial loop (attention's scores over the
  key positions, its context over the head dim) with reductions kept in each thread (split
  by 16 and unrolled, so each thread has 16 loads in flight), or,
  where only reductions remain (a row's max or sum), over the reduction as a cross-thread
  reduction. Each thread then writes a strided share of the row; an output that is itself
  a reduction (float32 attention's context) keeps its reduction loops in the thread.
"""

from __future__ import annotations

from .expr import Const
from .schedule import RV, Schedule
from .schedule_tree import blocks, find_block, reduce_loop_vars, spatial_loop_vars
from .stmt import BlockRealize, PrimFunc

ELEMENTWISE_THREADS = 256
MATMUL_THREADS = 128
ROW_THREADS = 256
REDUCE_UNROLL = 16  # steps of a thread's own reduction loop unrolled in the row path


def _row_threads(extent: object) -> int:
    """Threads per row: a power of two from 32 to 256 covering a constant row length."""
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


def _widest(sch: Schedule, loops: list[RV]) -> RV:
    """The loop of largest extent, a symbolic one first, the innermost on ties."""

    def size(lp: RV) -> int:
        ext = sch.get(lp).extent
        return int(ext.value) if isinstance(ext, Const) else 1 << 62

    best = loops[-1]
    for lp in reversed(loops):
        if size(lp) > size(best):
            best = lp
    return best


def _unroll_steps(sch: Schedule, loop: RV) -> None:
    """Split a reduction loop a thread runs alone by REDUCE_UNROLL and unroll the inner part,
    so the thread has that many loads in flight instead of one dependent load per step
    (attention's context sums over every key position; its kv length is symbolic).

        for k in range(m): acc += p[k] * v[k, j]   ->
        for k_0 in range((m + 15) // 16): for k_1 in range(16) (unrolled):
            if k_0*16 + k_1 < m: acc += p[k_0*16 + k_1] * v[k_0*16 + k_1, j]
    """
    ext = sch.get(loop).extent
    if isinstance(ext, Const) and int(ext.value) <= REDUCE_UNROLL:
        return
    _, inner = sch.split(loop, [None, REDUCE_UNROLL])
    sch.unroll(inner)


def _spread_in_row(sch: Schedule, name: str, row: RV, threads: int) -> None:
    """Spread a producer computed under `row` over the row's threads (see module docstring)."""
    block = sch.get_block(name)
    loops = sch.get_loops(block)
    row_var = sch.get(row).var
    at = [i for i, lp in enumerate(loops) if sch.get(lp).var is row_var]
    rest = loops[at[0] + 1 :] if at else loops[-1:]
    found = find_block(sch.mod, name)
    spatial_vars = spatial_loop_vars(found[0]) if found else set()
    spatial = [lp for lp in rest if sch.get(lp).var in spatial_vars]
    if spatial:
        reduce_vars = reduce_loop_vars(found[0]) if found else set()
        steps = [lp for lp in rest if sch.get(lp).var in reduce_vars]
        outer, inner = sch.split(_widest(sch, spatial), [None, threads])
        sch.reorder(inner, outer)
        sch.bind(inner, "threadIdx.x")
        for lp in steps:
            _unroll_steps(sch, lp)
        return
    k0, k1 = sch.split(loops[-1], [None, threads])
    sch.reorder(k1, k0)
    sch.bind(k1, "threadIdx.x")


def default_cuda_schedule(func: PrimFunc) -> Schedule:
    """See the module docstring; the schedule's trace records every step."""
    sch = Schedule(func)
    realizes: list[BlockRealize] = [br for br, _ in blocks(func)]
    out = realizes[-1]
    producers = realizes[:-1]
    block = sch.get_block(out.block.name)
    loops = sch.get_loops(block)
    red = reduce_loop_vars(out)
    spatial = [lp for lp in loops if sch.get(lp).var not in red]
    out_rank = len(out.block.writes[0].buffer.shape)
    ranks = [len(br.block.writes[0].buffer.shape) for br in producers]
    same_shape = all(r == out_rank for r in ranks)
    if red and (not producers or same_shape):  # the output is itself the reduction (matmul)
        _spread(sch, spatial, MATMUL_THREADS)
        return sch
    if not producers:
        _spread(sch, loops, ELEMENTWISE_THREADS)
        return sch
    if same_shape:  # accumulators of the output's shape
        tx = _spread(sch, loops, MATMUL_THREADS)
        for br in reversed(producers):
            sch.compute_at(sch.get_block(br.block.name), tx)
            sch.set_scope(sch.get_block(br.block.name), 0, "local")
        return sch
    steps = [lp for lp in loops if sch.get(lp).var in red]  # the output's own reduction
    last = spatial[-1]
    threads = _row_threads(sch.get(last).extent)
    row = sch.fuse(*spatial[:-1]) if len(spatial) > 2 else spatial[0]
    _, tx = sch.split(last, [None, threads])
    sch.bind(row, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    for lp in steps:
        _unroll_steps(sch, lp)
    for br in reversed(producers):
        p = sch.get_block(br.block.name)
        sch.compute_at(p, row)
        sch.set_scope(p, 0, "shared")
        _spread_in_row(sch, br.block.name, row, threads)
    return sch
