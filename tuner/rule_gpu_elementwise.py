"""GPU elementwise outputs (silu_mul, residual add, rope, casts): wide accesses at any size.

An output block that reduces nothing and reads only the function's inputs (its elementwise
producers already inlined) is split into `vec`-element vectors along its last dim (8, 4 or 2
halves that divide it: 16, 8 or 4 bytes; 1 where it is odd), every other loop fused with the
vectors, and the vectors spread over `threads` threads (sampled in {64, ..., 1024}) of as many
blocks as needed, each thread taking `per` vectors (sampled in {1, 2, 4}, unrolled, `threads`
vectors apart so a warp's accesses stay contiguous). A last block the vectors do not fill is
guarded by the vector index, which all lanes of a vector share, so the accesses stay wide:

    for t, j in 7 x 5120: out[t, j] = silu(gate[t, j]) * up[t, j]
    -> for b in blockIdx.x(18): for p in unroll(1): for tx in threadIdx.x(256):
         if (b * 256 + tx) < 4480: for v in vectorized(8): out[...] = ...   (4480 vectors)
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import divisors_among, is_reduction, loop_infos, uniform, writes_output
from .space import ScheduleRule, SpaceContext, try_fork

VECS = (8, 4, 2)
THREADS = (64, 128, 256, 512, 1024)
PER_THREAD = (1, 2, 4)


class GpuElementwise(ScheduleRule):
    """Vectors over threads for an output computed from the inputs alone."""

    name = "gpu_elementwise"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if not ctx.is_gpu or is_reduction(sch.func, block) or not writes_output(sch.func, block):
            return []
        probe = sch.copy()
        rv = probe.get_block(block)
        if probe.get_producers(rv):
            return []  # reads an intermediate: the rows, tilings or the default take it
        loops = loop_infos(probe, rv)
        n = loops[-1].extent if loops else None
        if n is None or any(lp.reduce for lp in loops):
            return []
        sketches = []
        for vec in divisors_among(n, VECS) or [1]:
            made = try_fork(sch, lambda t, v=vec: _vectors_over_threads(t, block, v))
            if made is not None:
                sketches.append(made)
        return sketches


def _vectors_over_threads(t: Schedule, block: str, vec: int) -> None:
    """The last loop split into `vec`-wide vectors, fused with the loops above it, and the
    vectors spread over blocks of sampled `threads`, `per` vectors to a thread."""
    o = t.get_block(block)
    *outer, last = t.get_loops(o)
    vectors, v = t.split(last, [None, vec])
    flat = t.fuse(*outer, vectors) if outer else vectors
    threads = t.sample_categorical(list(THREADS), uniform(len(THREADS)))
    per = t.sample_categorical(list(PER_THREAD), uniform(len(PER_THREAD)))
    bx, p, tx = t.split(flat, [None, per, threads])
    t.bind(bx, "blockIdx.x")
    t.bind(tx, "threadIdx.x")
    t.unroll(p)
    t.vectorize(v)
