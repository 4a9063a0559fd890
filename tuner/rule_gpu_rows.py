"""GPU row-wise kernels (rmsnorm, layernorm, softmax): a row per block, cross-thread reductions.

An elementwise output over rows whose producers reduce each row (sum of squares, max, sum of
exponentials) becomes one thread block per row: `threads` threads (threadIdx.x) stride the row
`vec` elements at a time (vectorized 8-16 byte accesses), every reduction is computed under
the row's block by all its threads (a cross-thread reduction) into shared memory, then the
threads write their share of the output. One sketch per vector width `vec` in {2, 4, 8}
(fixed in the sketch, so a short row still gets 16-byte accesses with fewer threads), each
sampling the threads in {64, ..., 1024} for which threads * vec divides the row.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import loop_infos, reduced_output, uniform
from .space import ScheduleRule, SpaceContext, try_fork

THREADS = (64, 128, 256, 512, 1024)
VECS = (2, 4, 8)


class GpuRows(ScheduleRule):
    """A row per block with shared-memory row statistics."""

    name = "gpu_rows"

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
        order = [name for name in _program_order(probe) if name in producers]
        sketches = []
        for vec in VECS:
            threads = [t for t in THREADS if n % (t * vec) == 0]
            if threads:
                made = try_fork(
                    sch, lambda t, ts=threads, v=vec: _row_per_block(t, block, order, ts, v)
                )
                if made is not None:
                    sketches.append(made)
        return sketches


def _row_per_block(
    t: Schedule, block: str, producers: list[str], threads: list[int], vec: int
) -> None:
    """Bind a row per block and `threads` threads striding it `vec` elements at a time; the
    row statistics (producers, in program order) are computed under the row by all threads."""
    o = t.get_block(block)
    i, j = t.get_loops(o)
    tx_n = t.sample_categorical(threads, uniform(len(threads)))
    j0, j1, j2 = t.split(j, [None, tx_n, vec])
    t.bind(i, "blockIdx.x")
    t.bind(j1, "threadIdx.x")
    t.unroll(j0)
    t.vectorize(j2)
    for name in reversed(producers):
        p = t.get_block(name)
        t.compute_at(p, i)
        t.set_scope(p, 0, "shared")
        k = t.get_loops(p)[-1]
        k0, k1, k2 = t.split(k, [None, tx_n, vec])
        t.reorder(k1, k0, k2)
        t.bind(k1, "threadIdx.x")
        t.unroll(k0)
        t.unroll(k2)


def _program_order(sch: Schedule) -> list[str]:
    from .space import block_names

    return block_names(sch.func)
