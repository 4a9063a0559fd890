"""GPU low-batch GEMV / dense (m = 1 .. 8; 16 for 4-bit weights): warps split k, wide weight
loads, a warp reduction.

For an output that casts a float32 accumulator of `x[1, k] . w[n, k]` (the library's fp16 and
bf16 dense), each output row gets `lanes` threads (threadIdx.x) that split k; every thread
loads `vec` contiguous elements of w and x per step (16 bytes for 8 halves), all steps
unrolled so many loads are in flight; the partial sums meet in a cross-thread reduction and
the row's accumulator lives in a register. `rows` rows share a block (threadIdx.y). Sampled:
rows in {1, 2, 4, 8}, lanes in {32, 64, 128} (one to four warps per row), vec in {2, 4, 8}.
With 2 to 8 tokens (batched decode) a row holds all of them: the token loop goes inside the
row, one accumulator and one cross-thread reduction per token, so each weight row is read
from memory once and the tokens' x rows come from L1.

A fused epilogue that pairs columns (rope's halves, gate|up; `block_info.paired_output`) is
claimed at the reduction: the output's loops that pick within a pair go innermost, the others
are fused into rows, and a row's accumulator holds the whole pair (a register per column,
each with its own cross-thread reduction), so the epilogue is written from registers:

    blockIdx.x, threadIdx.y: row (head, j)     # rope: 48 x 64 rows for 48 heads of d=128
      for p in 2: acc[p] = allreduce(sum over threadIdx.x's share of k)
      for p in 2: out[hh, p, j] = rope(acc[p], acc[1 - p])
"""

from __future__ import annotations

from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import RV

from .block_info import divisors_among, loop_infos, paired_output, reduced_output, uniform
from .space import ScheduleRule, SpaceContext, try_fork

ROWS = (1, 2, 4, 8)
# up to this many tokens share a row's lanes (one accumulator and reduction each); more
# would re-read x too often from L1, and from m = 16 the tensor-core tiles take over
MAX_TOKENS = 8
# 4-bit weights have no tensor-core tiling: their rows take up to 16 tokens (batched decode
# of 9-16 sequences), each word of the weight read once and dequantised once for all of them
MAX_TOKENS_PACKED = 16
LANES = (32, 64, 128)
VECS = (2, 4, 8)


def _max_tokens(probe: Schedule, acc: str) -> int:
    """The most tokens a row takes: MAX_TOKENS_PACKED where the accumulator reads a packed
    integer weight (q4_dense's uint32 words), else MAX_TOKENS."""
    block = probe.get(probe.get_block(acc))
    packed = any(r.buffer.dtype in ("uint32", "int32", "uint8") for r in block.reads)
    return MAX_TOKENS_PACKED if packed else MAX_TOKENS


class GpuGemv(ScheduleRule):
    """Split-K across the threads of a row for decode-shaped dense outputs."""

    name = "gpu_gemv"
    # 2: epilogues that pair columns (rope, gate|up) keep the pair in registers; 3: m <= 8;
    # 4: m <= 16 for 4-bit weights
    version = 4

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        paired = paired_output(sch, block) if ctx.is_gpu else None
        if paired is not None and paired.pair_axes:
            return _paired(sch, block)
        found = reduced_output(sch, block) if ctx.is_gpu else None
        if found is None or len(found.producers) != 1:
            return []
        probe, out, producers = found.probe, found.out, found.producers
        acc_name = probe.get(producers[0]).name
        out_loops = loop_infos(probe, out)
        acc_loops = loop_infos(probe, producers[0])
        if len(out_loops) != 2 or not acc_loops[-1].reduce:
            return []
        m, n, k = out_loops[0].extent, out_loops[1].extent, acc_loops[-1].extent
        if m is None or n is None or k is None or not 1 <= m <= _max_tokens(probe, acc_name):
            return []
        if m > 1 and len(acc_loops) != 3:
            return []  # a few tokens: dense-shaped (tokens, columns, k) only, not a row norm
        rows = divisors_among(n, ROWS)
        pairs = [(lane, v) for lane in LANES for v in VECS if k % (lane * v) == 0]
        if not rows or not pairs:
            return []
        lanes, vecs = _lanes_vecs(pairs, k)

        def build(t: Schedule) -> None:
            o = t.get_block(block)
            acc = t.get_block(acc_name)
            i, j = t.get_loops(o)
            if m > 1:  # every token of a row in one thread group: the weight is read once
                t.reorder(j, i)
            _rows_of_lanes(t, j, acc, rows, lanes, vecs)
            if m > 1:  # constant indices keep the tokens' accumulators in registers
                t.unroll(i)
                _unroll_token_loop(t, acc)

        made = try_fork(sch, build)
        return [made] if made is not None else []


def _lanes_vecs(pairs: list[tuple[int, int]], k: int) -> tuple[list[int], list[int]]:
    """The lane and vector-width candidates of a k extent, from its (lanes, vec) pairs."""
    lanes = sorted({p[0] for p in pairs})
    vecs = sorted({p[1] for p in pairs if k % (max(lanes) * p[1]) == 0}) or [min(VECS)]
    return lanes, vecs


def _rows_of_lanes(
    t: Schedule, row: RV, acc: RV, rows: list[int], lanes: list[int], vecs: list[int]
) -> None:
    """`rows` output rows per block (threadIdx.y), each with its accumulator in a register,
    computed under the row by threadIdx.x lanes splitting k."""
    r = t.sample_categorical(rows, uniform(len(rows)))
    j0, j1 = t.split(row, [None, r])
    t.bind(j0, "blockIdx.x")
    t.bind(j1, "threadIdx.y")
    t.compute_at(acc, j1)
    t.set_scope(acc, 0, "local")
    _split_k(t, acc, lanes, vecs)


def _unroll_token_loop(t: Schedule, acc: RV) -> None:
    """Unroll the accumulator's token loop, the first under its row's threadIdx.y, so each
    token's accumulator has a constant index (a register, not local memory)."""
    loops = t.get_loops(acc)
    at = next(n for n, lp in enumerate(loops) if t.get(lp).thread == "threadIdx.y")
    t.unroll(loops[at + 1])


def _split_k(t: Schedule, acc: RV, lanes: list[int], vecs: list[int]) -> None:
    """The accumulator's k loop split over threadIdx.x lanes with `vec`-wide unrolled steps."""
    kk = t.get_loops(acc)[-1]
    lane = t.sample_categorical(lanes, uniform(len(lanes)))
    vec = t.sample_categorical(vecs, uniform(len(vecs)))
    k0, tx, v = t.split(kk, [None, lane, vec])
    t.reorder(tx, k0, v)
    t.bind(tx, "threadIdx.x")
    t.unroll(k0)
    t.unroll(v)


def _paired(sch: Schedule, block: str) -> list[Schedule]:
    """The GEMV form for a reduction whose output epilogue pairs its columns (module doc)."""
    found = paired_output(sch, block)
    assert found is not None
    probe = found.probe
    acc_loops = loop_infos(probe, found.acc)
    out_loops = loop_infos(probe, found.out)
    if not acc_loops[-1].reduce or sum(i.reduce for i in acc_loops) != 1:
        return []
    if any(i.extent is None for i in (*acc_loops, *out_loops)):
        return []  # static extents only
    m = acc_loops[0].extent or 0
    if not 1 <= m <= _max_tokens(probe, probe.get(found.acc).name):
        return []
    pair_loops = set(found.pair_loops)
    inner = ([0] if m > 1 else []) + sorted(pair_loops)  # tokens, then the pick, in a row
    rows = [n for n, i in enumerate(out_loops) if n not in inner and i.extent != 1]
    if not rows:
        return []
    n_rows = 1
    for n in rows:
        n_rows *= out_loops[n].extent or 1
    k = acc_loops[-1].extent or 0
    row_sizes = divisors_among(n_rows, ROWS)
    pairs = [(lane, v) for lane in LANES for v in VECS if k % (lane * v) == 0]
    if not row_sizes or not pairs:
        return []
    lanes, vecs = _lanes_vecs(pairs, k)
    out_name = probe.get(found.out).name

    def build(t: Schedule) -> None:
        o = t.get_block(out_name)
        acc = t.get_block(block)
        loops = t.get_loops(o)
        pick = [loops[n] for n in inner]
        if pick:
            t.reorder(*(loops[n] for n in rows), *pick)
        row = t.fuse(*(loops[n] for n in rows)) if len(rows) > 1 else loops[rows[0]]
        _rows_of_lanes(t, row, acc, row_sizes, lanes, vecs)
        for lp in pick:
            t.unroll(lp)
        if m > 1:
            _unroll_token_loop(t, acc)

    made = try_fork(sch, build)
    return [made] if made is not None else []
