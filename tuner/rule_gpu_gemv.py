"""GPU low-batch GEMV / dense (m = 1): warps split k, wide weight loads, a warp reduction.

For an output that casts a float32 accumulator of `x[1, k] . w[n, k]` (the library's fp16 and
bf16 dense), each output row gets `lanes` threads (threadIdx.x) that split k; every thread
loads `vec` contiguous elements of w and x per step (16 bytes for 8 halves), all steps
unrolled so many loads are in flight; the partial sums meet in a cross-thread reduction and
the row's accumulator lives in a register. `rows` rows share a block (threadIdx.y). Sampled:
rows in {1, 2, 4, 8}, lanes in {32, 64, 128} (one to four warps per row), vec in {2, 4, 8}.
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule

from .block_info import divisors_among, loop_infos, reduced_output, uniform
from .space import ScheduleRule, SpaceContext, try_fork

ROWS = (1, 2, 4, 8)
LANES = (32, 64, 128)
VECS = (2, 4, 8)


class GpuGemv(ScheduleRule):
    """Split-K across the threads of a row for decode-shaped dense outputs."""

    name = "gpu_gemv"

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        found = reduced_output(sch, block) if ctx.is_gpu else None
        if found is None or len(found.producers) != 1:
            return []
        probe, out, producers = found.probe, found.out, found.producers
        acc_name = probe.get(producers[0]).name
        out_loops = loop_infos(probe, out)
        acc_loops = loop_infos(probe, producers[0])
        if len(out_loops) != 2 or out_loops[0].extent != 1 or not acc_loops[-1].reduce:
            return []
        n, k = out_loops[1].extent, acc_loops[-1].extent
        if n is None or k is None:
            return []
        rows = divisors_among(n, ROWS)
        pairs = [(lane, v) for lane in LANES for v in VECS if k % (lane * v) == 0]
        if not rows or not pairs:
            return []
        lanes = sorted({p[0] for p in pairs})
        vecs = sorted({p[1] for p in pairs if k % (max(lanes) * p[1]) == 0}) or [min(VECS)]

        def build(t: Schedule) -> None:
            o = t.get_block(block)
            acc = t.get_block(acc_name)
            _, j = t.get_loops(o)
            r = t.sample_categorical(rows, uniform(len(rows)))
            j0, j1 = t.split(j, [None, r])
            t.bind(j0, "blockIdx.x")
            t.bind(j1, "threadIdx.y")
            t.compute_at(acc, j1)
            t.set_scope(acc, 0, "local")
            kk = t.get_loops(acc)[-1]
            lane = t.sample_categorical(lanes, uniform(len(lanes)))
            vec = t.sample_categorical(vecs, uniform(len(vecs)))
            k0, tx, v = t.split(kk, [None, lane, vec])
            t.reorder(tx, k0, v)
            t.bind(tx, "threadIdx.x")
            t.unroll(k0)
            t.unroll(v)

        made = try_fork(sch, build)
        return [made] if made is not None else []
