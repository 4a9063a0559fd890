"""GPU row-wise kernels (rmsnorm, layernorm, softmax): rows at any size, cross-thread reductions.

An elementwise output over rows whose producers reduce each row (sum of squares, max, sum of
exponentials) gets two forms, one sketch per vector width `vec` (8, 4 or 2 elements, 16 to 4
bytes of halves; 1 where n is odd) that divides the row:

- a row per block: `threads` threads (threadIdx.x, sampled in {64, ..., 1024}) stride the
  row `vec` elements at a time, every statistic is a block-wide reduction into shared
  memory, then the threads write their share of the output;
- a row per warp, for short and middling rows: `rows` rows per block (threadIdx.y, sampled
  among {1, 2, 4, 8} that divide m; 1 where m is symbolic), 32 lanes each, the statistics
  warp all-reduces kept in every lane's registers.

A form that would take the threads over a row more than MAX_PASSES times (each pass
unrolled) is left out: a 151936-wide row gets 1024 threads of 8 halves, 19 passes.

Rows of any length: the threads' stride need not divide the row. The row is split into
`vec`-wide vectors first, then the vectors over the threads; the last pass is guarded by the
vector index, which is the same for all lanes of a vector, so the accesses stay wide
(softmax over 1000 columns: 125 vectors of 8 halves, 128 threads, one guarded pass):

    for j in 1000: out[i, j] = ...
    -> for t in threadIdx.x(128): if t < 125: for v in vectorized(8): out[i, t * 8 + v] = ...
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import RV

from .block_info import divisors_among, loop_infos, reduced_output, uniform
from .space import ScheduleRule, SpaceContext, try_fork

THREADS = (64, 128, 256, 512, 1024)
VECS = (8, 4, 2)
WARP_ROWS = (1, 2, 4, 8)
LANES = 32
# passes of the threads over a row, each unrolled: more would bloat the kernel for no gain
MAX_PASSES = 32


class GpuRows(ScheduleRule):
    """A row per block or per warp, row statistics as cross-thread reductions."""

    name = "gpu_rows"
    # 2: rows no thread stride divides (guarded last pass), a row per warp, odd rows scalar
    version = 2

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        found = reduced_output(sch, block) if ctx.is_gpu else None
        if found is None:
            return []
        probe, out = found.probe, found.out
        producers = [probe.get(p).name for p in found.producers]
        rank = len(probe.get(out).writes[0].buffer.shape)
        for p in probe.get_producers(out):
            if len(probe.get(p).writes[0].buffer.shape) >= rank:
                return []  # an accumulator of the output's shape, not row statistics
        loops = loop_infos(probe, out)
        n = loops[-1].extent
        if len(loops) != 2 or n is None:
            return []
        m = loops[0].extent
        order = [name for name in _program_order(probe) if name in producers]
        sketches = []
        for vec in divisors_among(n, VECS) or [1]:
            threads = [t for t in THREADS if t * vec <= n and _passes(n, t, vec) <= MAX_PASSES]
            if threads:
                made = try_fork(
                    sch, lambda t, ts=threads, v=vec: _row_per_block(t, block, order, ts, v)
                )
                if made is not None:
                    sketches.append(made)
            if _passes(n, LANES, vec) > MAX_PASSES:
                continue
            # a symbolic m keeps one row per block: a guard on the rows would split a block
            rows = divisors_among(m, WARP_ROWS) if m is not None else [1]
            made = try_fork(sch, lambda t, rs=rows, v=vec: _row_per_warp(t, block, order, rs, v))
            if made is not None:
                sketches.append(made)
        return sketches


def _row_per_block(
    t: Schedule, block: str, producers: list[str], threads: list[int], vec: int
) -> None:
    """Bind a row per block and `threads` threads striding it `vec` elements at a time; the
    row statistics (producers, in program order) are computed under the row by all threads."""
    o = t.get_block(block)
    i = t.get_loops(o)[0]
    tx_n = t.sample_categorical(threads, uniform(len(threads)))
    t.bind(i, "blockIdx.x")
    _stride_row(t, o, producers, i, tx_n, vec, "shared")


def _row_per_warp(t: Schedule, block: str, producers: list[str], rows: list[int], vec: int) -> None:
    """`rows` rows per block (threadIdx.y), each strided by a warp's 32 lanes `vec` elements
    at a time, its statistics computed under the row by the warp into every lane's registers
    (a warp all-reduce leaves each lane the total: no shared memory, no barrier)."""
    o = t.get_block(block)
    i = t.get_loops(o)[0]
    r = t.sample_categorical(rows, uniform(len(rows)))
    i0, i1 = t.split(i, [None, r])
    t.bind(i0, "blockIdx.x")
    t.bind(i1, "threadIdx.y")
    _stride_row(t, o, producers, i1, LANES, vec, "local")


def _stride_row(
    t: Schedule, o: RV, producers: list[str], row: RV, threads: int | RV, vec: int, scope: str
) -> None:
    """The output's columns and each producer's reduction (moved under `row`, its result in
    `scope`) split into `vec`-wide steps over `threads` threadIdx.x threads; a last pass the
    threads do not fill is guarded per vector, so the accesses stay `vec` wide."""
    j = t.get_loops(o)[-1]
    j0, j1, j2 = _vector_stride(t, j, threads, vec)
    t.bind(j1, "threadIdx.x")
    t.unroll(j0)
    t.vectorize(j2)
    for name in reversed(producers):
        p = t.get_block(name)
        t.compute_at(p, row)
        t.set_scope(p, 0, scope)
        k0, k1, k2 = _vector_stride(t, t.get_loops(p)[-1], threads, vec)
        t.reorder(k1, k0, k2)
        t.bind(k1, "threadIdx.x")
        t.unroll(k0)
        t.unroll(k2)


def _vector_stride(t: Schedule, loop: RV, threads: int | RV, vec: int) -> tuple[RV, RV, RV]:
    """`loop` as (passes, threads, vec): whole vectors first, then the vectors over the
    threads, so a guard for an unfilled last pass indexes vectors, not their elements."""
    vectors, v = t.split(loop, [None, vec])
    passes, tx = t.split(vectors, [None, threads])
    return passes, tx, v


def _passes(n: int, threads: int, vec: int) -> int:
    """How many strides of `threads` threads, `vec` elements each, cover a row of `n`."""
    return -(-n // (threads * vec))


def _program_order(sch: Schedule) -> list[str]:
    from .space import block_names

    return block_names(sch.func)
