"""The untuned GPU schedule every op gets: correct everywhere, simple, a baseline to beat.

* Elementwise outputs: all loops fused, 256 threads per block, one element per thread.
* Matmul-like outputs (the reduction writes a same-shape accumulator, or the output itself):
  one output element per thread, 128 threads per block; an accumulator is computed in the
  thread and kept in registers (`local`).
* Dense-like outputs whose one reduction is constant, at least WARP_REDUCTION long and runs
  along every input's last dim (x[i, k] . w[j, k], with any elementwise epilogue: bias,
  residual add, silu_mul, rope): a warp per output element, its lanes splitting the
  reduction with 16-byte loads and meeting in a warp sum (`_warp_per_output`), so decode's
  GEMVs read the weight rows coalesced.
* Row-wise outputs (rmsnorm, layernorm, softmax, attention: producers of other shapes feed
  the output): one row per thread block, the row being every spatial loop of the output but
  its last. Each producer is computed under the row's blockIdx loop into `shared` memory:
  its threads spread over its largest remaining spatial loop (attention's scores over the
  key positions, its context over the head dim) with reductions kept in each thread (split
  by 16 and unrolled, so each thread has 16 loads in flight), or,
  where only reductions remain (a row's max or sum), over the reduction as a cross-thread
  reduction. Each thread then writes a strided share of the row.
* Keyed rows (attention: the output, or its same-shape accumulator, sums over the row's key
  positions): one row per thread block of KEYED_WARPS warps, every intermediate in shared
  memory. A key belongs to a row of KEY_LANES lanes (threadIdx.x), two rows to a warp
  (threadIdx.y: the block's rows of lanes); a key's score is a reduction over the row's
  lanes (each reads KEYED_VEC contiguous elements of the key's head dim, 16 bytes,
  KEYS_IN_FLIGHT keys unrolled, against its slice of the query, read into registers
  unguarded so the load stays out of the key loop); the row's max and sum are rfactored
  over the rows of lanes (each row of lanes reduces its share of the keys, then one row of
  lanes combines the rows' results); the probabilities spread over every thread. The
  context is rfactored over the rows of lanes: each thread sums its row's keys for
  KEYED_VEC head-dim columns in registers (zeroed once before the keys, 16 keys unrolled, a
  key's values read into registers with one 16-byte load), the partial sums meet in shared
  memory, and a thread per column adds them up. A mask that calls no math function
  (prefill's causal mask) is inlined into its readers.

      blockIdx.x: row (b, h, n);  threadIdx.y: w;  threadIdx.x: lane (KEY_LANES of them)
        scores[j] = sum over the lanes of q[d] * k[j, d]   for j = w, w + W, ...
        mx_part[w] = max over the lanes of max over j = lane + L*w, ... of scores[j]
        mx = max over w of mx_part[w]  (the sum alike);  p = exp(scores - mx) / den
        part[w, d] = sum over j = w, w + W, ... of p[j] * v[j, d]   (registers, then shared)
        out[d] = sum over w of part[w, d]

  Decode rows (one query token per batch and head: b x 32 rows, too few to fill the GPU)
  are split from sm_90 over a cluster of KEYED_CLUSTER blocks of KEYED_CLUSTER_WARPS warps,
  each block taking a contiguous share of the keys (flash-decoding's split of the KV
  length, combined inside the kernel): the row's max, its sum and the context are rfactored
  over the block's rank, each block's share in `shared.cluster` memory, and every block
  adds up the shares it reads from the others after the cluster's barrier:

      blockIdx.x / C: row;  blockIdx.x % C: r (keys r*ceil(m/C) ...)
        mx_share[r] = max over the block's keys;  sync_cluster();  mx = max over r of mx_share[r]
        (the sum alike);  ctx_share[r, d] = sum over the block's keys;  sync_cluster()
        out[d] = sum over r of ctx_share[r, d]

  With `group` (the tuner's `default_grouped` sketch; the default keeps a query head per
  row) a block, or a cluster, takes the query heads of one kv head (grouped-query
  attention: `kv_group`, 4 for Llama-3-8B), which score the same keys and weigh the same
  values: a lane copies its
  slice of a key into registers once and scores it against every head of the group (one
  all-reduce of `group` partial sums), and a thread's context keeps `group` x its columns,
  each value read once for all of them. Keys and values then cross the L2 once per kv head
  instead of once per query head, and the rows' shared scores are `group` rows of the
  block's share of the keys (the lowering sizes them by their guards: a cluster block holds
  its eighth). It pays where the rows already fill the GPU (decode b=16 on an H100: 362.7
  against 484.6 us a head per cluster) and costs where they do not (b=1: a quarter of the
  blocks; 63.9 against 43.8 us at kv 4096), so it is a sketch for tuning to pick per
  bucket.

      blockIdx.x / C: (batch, kv head);  for each of the block's keys j (rows of lanes, by 4):
        k_reg = k[j, lane's d];  s[g] = lanes_sum(q[g, lane's d] . k_reg)  for g in the group
"""

from __future__ import annotations

import re

from .default_key_tiles import key_tiled, key_tiles_schedule
from .dtypes import itemsize
from .expr import BinOp, BufferLoad, Call, Const
from .schedule import RV, Schedule
from .schedule_nest import init_before, loops_below, operand_copy, reduction_vars
from .schedule_tree import (
    blocks,
    find_block,
    reduce_loop_vars,
    spatial_loop_vars,
)
from .stmt import BlockRealize, BufferStore, PrimFunc
from .visit import walk

ELEMENTWISE_THREADS = 256
MATMUL_THREADS = 128
OUTPUT_WARPS = 4  # warps of a block whose warps each compute one output (matmul, GEMV)
WARP_REDUCTION = 256  # reductions at least this long get a warp per output
ROW_THREADS = 256
WARP = 32
KEYED_WARPS = 32  # warps of a row whose output sums over the row's keys (attention)
KEYED_CLUSTER_WARPS = 16  # warps of each block when the row is split over a cluster
KEYED_CLUSTER = 8  # blocks a decode row (one query token) is split over, from sm_90
KEYED_VEC = 8  # head-dim elements per lane: 16 bytes of bf16 or fp16
KEY_LANES = 16  # lanes per key (threadIdx.x): a warp holds two keys (threadIdx.y)
KEYS_IN_FLIGHT = 4  # keys a row of lanes scores at once (unrolled), each with its own reduction
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
        known = _const_extent(sch, lp)
        return 1 << 62 if known is None else known

    best = loops[-1]
    for lp in reversed(loops):
        if size(lp) > size(best):
            best = lp
    return best


def _unroll_steps(sch: Schedule, loop: RV, steps: int = REDUCE_UNROLL) -> None:
    """Split a reduction loop a thread runs alone by REDUCE_UNROLL and unroll the inner part,
    so the thread has that many loads in flight instead of one dependent load per step
    (attention's context sums over every key position; its kv length is symbolic).

        for k in range(m): acc += p[k] * v[k, j]   ->
        for k_0 in range((m + 15) // 16): for k_1 in range(16) (unrolled):
            if k_0*16 + k_1 < m: acc += p[k_0*16 + k_1] * v[k_0*16 + k_1, j]
    """
    known = _const_extent(sch, loop)
    if known is not None and known <= steps:
        return
    _, inner = sch.split(loop, [None, steps])
    sch.unroll(inner)


def _spread_in_row(sch: Schedule, name: str, row: RV, threads: int) -> None:
    """Spread a producer computed under `row` over the row's threads (see module docstring)."""
    block = sch.get_block(name)
    loops = sch.get_loops(block)
    rest = loops_below(sch, block, row)
    found = find_block(sch.mod, name)
    spatial_vars = spatial_loop_vars(found[0]) if found else set()
    spatial = [lp for lp in rest if sch.get(lp).var in spatial_vars]
    if spatial:
        reduce_vars = reduction_vars(sch, name)
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


def sm_version(arch: str) -> int:
    """The compute capability in an arch name ("sm_90a" -> 90); 0 when there is none."""
    found = re.match(r"sm_(\d+)", arch)
    return int(found.group(1)) if found else 0


def _reduces(sch: Schedule, name: str) -> bool:
    """Whether block `name` has a reduction."""
    return bool(reduction_vars(sch, name))


def _split_lanes(
    sch: Schedule, loop: RV, widest: int = KEYED_VEC, lanes: int = KEY_LANES
) -> tuple[RV, RV]:
    """Split `loop` into (outer, lane, vec): `lanes` lanes, each `vec` contiguous elements
    (the largest power of two up to `widest` dividing the extent / lanes); returns (lane,
    vec) after moving the outer steps inside the lane loop."""
    n = _const_extent(sch, loop) or 0
    widths = [w for w in (16, 8, 4, 2) if w <= widest] + [1]
    vec = next((v for v in widths if n and n % (lanes * v) == 0), 1)
    outer, lane, v = sch.split(loop, [None, lanes, vec])
    sch.reorder(lane, outer, v)
    sch.unroll(outer)
    sch.unroll(v)
    return lane, v


def _keyed_rows(
    sch: Schedule,
    out: BlockRealize,
    producers: list[BlockRealize],
    warps: int,
    cluster: int,
    group: int = 1,
) -> None:
    """Rows whose output sums over the row's keys (attention's context); the module
    docstring's last two items. `group` > 1 gives a block the `group` consecutive rows of the
    head axis (the query heads of one kv head), which read the same keys and values."""
    out_name = out.block.name
    masks = [br for br in producers if _cheap_elementwise(br)]
    for br in masks:  # a mask costs a compare where it is read: keep it out of shared memory
        sch.compute_inline(sch.get_block(br.block.name))
    producers = [br for br in producers if br not in masks]
    rank = len(out.block.writes[0].buffer.shape)
    last = producers[-1] if producers else None
    acc = (last.block.name if last is not None
           and len(last.block.writes[0].buffer.shape) == rank and _reduces(sch, last.block.name)
           else None)  # fmt: skip
    rows = warps * WARP // KEY_LANES  # threadIdx.y: KEY_LANES lanes (threadIdx.x) per key
    # a row's max and sum: each row of lanes takes its share of the keys and one row of
    # lanes combines the rows' results; with a cluster, first each block's share, the
    # blocks' results meeting in cluster memory
    shares: dict[str, str] = {}  # share block -> the block that combines the shares
    partials: set[str] = set()  # blocks of each row of lanes' share
    for br in producers:
        name = br.block.name
        if name == acc or not _reduces(sch, name) or len(br.block.writes[0].buffer.shape) >= rank:
            continue
        if cluster > 1:
            s, _ = sch.split(sch.get_loops(sch.get_block(name))[-1], [cluster, None])
            share = sch.get(sch.rfactor(s, 0)).name
            shares[share] = name
            name = share
        block = sch.get_block(name)
        _, ky, _ = sch.split(sch.get_loops(block)[-1], [None, rows, KEY_LANES])
        partials.add(sch.get(sch.rfactor(ky, len(sch.get(block).writes[0].buffer.shape))).name)
    # a register copy of a key's values (placed in _context_partials): one 16-byte load per
    # lane, shared by the group's rows
    values = operand_copy(sch, sch.get_block(acc or out_name), sch.mod.params[2].name)
    keys = sch.get_loops(sch.get_block(acc or out_name))[-1]
    part = None  # the context's share of one block of the cluster
    if cluster > 1:
        s, _ = sch.split(keys, [cluster, None])
        part = sch.rfactor(s, 0)  # [cluster, .., d]
        keys = sch.get_loops(part)[-1]
    _, jy = sch.split(keys, [None, rows])
    rf = sch.rfactor(jy, rank if part is not None else rank - 1)  # partial sums [.., row, d]
    o = sch.get_block(out_name)
    red = reduction_vars(sch, out_name)
    spatial = [lp for lp in sch.get_loops(o) if sch.get(lp).var not in red]
    cols = spatial[-1]
    if group > 1:  # [b, h, n, d] -> row (b, h / group, n), then (h % group, d) in the block
        heads, g = sch.split(spatial[1], [None, group])
        sch.reorder(*spatial[2:-1], g)
        spatial = [spatial[0], heads, *spatial[2:-1]]
        cols = _threads_over(sch, [g, cols], warps * WARP)
    else:
        spatial = spatial[:-1]
    row = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    sch.bind(row, "blockIdx.x")
    _, ty, tx = sch.split(cols, [None, rows, KEY_LANES])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    if acc is not None:
        a = sch.get_block(acc)
        sch.compute_at(a, tx)
        sch.set_scope(a, 0, "local")
    placed = _context_partials(sch, row, rf, part, rows, values, group > 1)
    names = [br.block.name for br, _ in blocks(sch.mod)]
    for name in reversed([n for n in names[: names.index(sch.get(rf).name)] if n not in placed]):
        _keyed_producer(sch, name, row, shares, rows, cluster, group, partials)


def _group_loop(sch: Schedule, loops: list[RV], group: int) -> RV | None:
    """The loop over a group's rows: the first of a block's `loops` below its row (and its
    cluster rank), the head axis of its region; None without a group."""
    if group <= 1 or not loops or _const_extent(sch, loops[0]) != group:
        return None
    return loops[0]


def _threads_over(sch: Schedule, loops: list[RV], threads: int) -> RV:
    """The loop a block's `threads` take of (the group's rows, the columns): both fused
    where the threads divide them evenly (so each thread's row is exact), else the columns
    alone, the rows a loop around them."""
    if len(loops) == 1:
        return loops[0]
    sizes = [_const_extent(sch, lp) for lp in loops]
    if all(sizes) and (sizes[0] * sizes[1]) % threads == 0:
        return sch.fuse(*loops)
    return loops[-1]


def _const_extent(sch: Schedule, loop: RV) -> int | None:
    """A loop's extent where it is a constant; None where it is symbolic."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, Const) else None


def _context_partials(
    sch: Schedule,
    row: RV,
    rf: RV,
    part: RV | None,
    rows: int,
    values: RV | None,
    grouped: bool,
) -> set[str]:
    """The context's partial sums `rf[.., row, d]`: each thread's in registers over its row
    of lanes' keys (zeroed once before them), copied to shared memory; with a cluster
    (`part`), the rows' sums added up in a register per column and stored once into this
    block's slot of cluster memory. A key's `values` for the thread's columns are copied
    into registers with one load; `grouped`, each thread keeps its columns of every row of
    the group, so the values it reads serve them all. Returns the names of the blocks
    placed besides `rf`'s own (its init, the values' copy)."""
    copy = sch.cache_write(rf, 0, "local")
    if part is not None:
        slot = sch.cache_write(part, 0, "local")
        sch.compute_at(slot, row)
        sch.set_scope(slot, 0, "shared.cluster")
        rank_loop, *cols = loops_below(sch, slot, row)
        sch.bind(rank_loop, "clusterIdx.x")
        threads = _threads_over(sch, cols, rows * KEY_LANES)
        _, py, px = sch.split(threads, [None, rows, KEY_LANES])
        sch.bind(py, "threadIdx.y")
        sch.bind(px, "threadIdx.x")
        sch.compute_at(part, px)
        sch.set_scope(part, 0, "local")
    # the copy of the partial sums: rows of lanes over the keys' split, lanes over the head dim
    sch.compute_at(copy, row)
    sch.set_scope(copy, 0, "shared")
    *ranks, w, d = loops_below(sch, copy, row)
    g = ranks.pop() if grouped else None
    for r in ranks:
        sch.bind(r, "clusterIdx.x")
    sch.bind(w, "threadIdx.y")
    lane, _ = _split_lanes(sch, d)
    sch.bind(lane, "threadIdx.x")
    if g is not None:  # the group's rows inside the lane: one thread sums them all
        sch.reorder(w, lane, g)
    sch.compute_at(rf, lane)
    sch.set_scope(rf, 0, "local")
    rest = loops_below(sch, rf, lane)
    red = reduction_vars(sch, sch.get(rf).name)
    j = [lp for lp in rest if sch.get(lp).var in red][-1]
    vs = [lp for lp in rest if sch.get(lp).var not in red]
    if vs:
        sch.reorder(j, *vs)
    for v in vs:
        sch.unroll(v)
    _unroll_steps(sch, j)
    red = reduction_vars(sch, sch.get(rf).name)
    steps = next(lp for lp in loops_below(sch, rf, lane) if sch.get(lp).var in red)
    placed = {sch.get(init_before(sch, rf, steps)).name}
    if values is not None:  # a key's values, read once into registers for every column
        loops = loops_below(sch, rf, lane)  # the key steps, then the columns (if any)
        cols = {sch.get(v).var for v in vs}
        at = next((i for i, lp in enumerate(loops) if sch.get(lp).var in cols), len(loops))
        _read_once(sch, values, loops[at - 1])
        placed.add(sch.get(values).name)
    return placed


def _read_once(sch: Schedule, copy: RV, at: RV) -> None:
    """Move an operand's copy under loop `at` of its reader, so the loops inside `at` (a
    group's rows) read it from registers instead of memory each time.

        for g: s[g] += q[g, d] * k[j, d]   ->
        k_local[d'] = k[j, d'];  for g: s[g] += q[g, d] * k_local[d]
    """
    sch.compute_at(copy, at)
    for lp in loops_below(sch, copy, at):
        sch.unroll(lp)


def _keyed_producer(
    sch: Schedule,
    name: str,
    row: RV,
    shares: dict[str, str],
    rows: int,
    cluster: int,
    group: int,
    partials: set[str],
) -> None:
    """A producer of a keyed row computed under `row` (scores, mask, max, sum, probs), its
    loops spread over the block's rows of lanes and lanes (and the cluster's blocks). The
    rows of a group run in a loop of each thread: inside the lane for the scores (a key's
    row, read once, is scored against every query of the group), outside the threads
    elsewhere."""
    p = sch.get_block(name)
    keys = operand_copy(sch, p, sch.mod.params[1].name) if group > 1 else None
    queries = operand_copy(sch, p, sch.mod.params[0].name)  # the scores' block alone reads q
    sch.compute_at(p, row)
    sch.set_scope(p, 0, "shared.cluster" if name in shares else "shared")
    if name in shares.values():  # adds up the cluster's shares: a lane reads each
        sch.bind(loops_below(sch, p, row)[-1], "threadIdx.x")
        return
    rest = loops_below(sch, p, row)
    if name in shares or (name in partials and cluster > 1):
        sch.bind(rest[0], "clusterIdx.x")
        rest = rest[1:]
    g = _group_loop(sch, rest, group)
    rest = [lp for lp in rest if lp != g]
    red = reduction_vars(sch, name)
    key_loops = [lp for lp in rest if sch.get(lp).var not in red]
    steps = [lp for lp in rest if sch.get(lp).var in red]
    if name in partials:  # a row of lanes' share of the keys' max or sum
        ko, kx = steps
        sch.bind(key_loops[-1], "threadIdx.y")
        sch.reorder(kx, ko)
        sch.bind(kx, "threadIdx.x")
        _unroll_steps(sch, ko, KEYS_IN_FLIGHT)  # a few keys per thread: 512 in a block of 512
        return
    if not key_loops:  # combines the rows' max or sum: one row's lanes, every row alike
        ko, kx = sch.split(steps[-1], [None, KEY_LANES])
        sch.reorder(kx, ko)
        sch.bind(kx, "threadIdx.x")
        _unroll_steps(sch, ko)
        return
    k = sch.fuse(*key_loops) if len(key_loops) > 1 else key_loops[0]
    k = _over_cluster(sch, k, cluster)
    if steps:  # scores: rows of lanes over the keys, lanes over the head dim
        ko, ky = sch.split(k, [None, rows])
        sch.reorder(ky, ko)
        sch.bind(ky, "threadIdx.y")
        lane, _ = _split_lanes(sch, steps[-1])
        sch.bind(lane, "threadIdx.x")
        _unroll_steps(sch, ko, KEYS_IN_FLIGHT)
        if g is not None:  # the group's rows inside the lane, each all-reduced
            gv, lv = sch.get(g).var, sch.get(lane).var
            loops = [lp for lp in loops_below(sch, p, row) if sch.get(lp).var is not gv]
            at = 1 + next(i for i, lp in enumerate(loops) if sch.get(lp).var is lv)
            sch.reorder(*loops[:at], g, *loops[at:])
            sch.unroll(g)
            if keys is not None:
                _read_once(sch, keys, lane)
        if queries is not None:  # a lane's slice of the query (every row of the group) in
            _read_once(sch, queries, lane)  # registers, unguarded: the same for every key
    else:  # elementwise over the keys: every thread of the block
        ko, ky, kx = sch.split(k, [None, rows, KEY_LANES])
        sch.reorder(ky, kx, ko)
        sch.bind(ky, "threadIdx.y")
        sch.bind(kx, "threadIdx.x")


def _over_cluster(sch: Schedule, loop: RV, cluster: int) -> RV:
    """With a cluster, `loop` split into `cluster` contiguous shares, one per block (the
    outer part bound to clusterIdx.x); the loop over a block's share."""
    if cluster <= 1:
        return loop
    s, rest = sch.split(loop, [cluster, None])
    sch.bind(s, "clusterIdx.x")
    return rest


def _reduce_axes(br: BlockRealize) -> list:
    return [iv for iv in br.block.iter_vars if iv.kind == "reduce"]


def _long_reduction(br: BlockRealize, out_rank: int) -> bool:
    """Whether `br` sums over one constant loop of at least WARP_REDUCTION steps (a dense
    layer's hidden size), long enough for a warp to share, into one value per output
    element (its rank is at least the output's: a dense layer's accumulator, not a norm's
    row sum, which every output of the row reads)."""
    axes = _reduce_axes(br)
    if len(axes) != 1 or len(br.block.writes[0].buffer.shape) < out_rank:
        return False
    ext = axes[0].dom.extent
    if not (isinstance(ext, Const) and int(ext.value) >= WARP_REDUCTION):
        return False
    # lanes read consecutive elements only where the reduction runs along every input's
    # last dim (x[i, k] . w[j, k]; not matmul's b[k, j], which threads over j read better)
    own = {w.buffer.name for w in br.block.writes}
    k = axes[0].var
    inputs = [r for r in br.block.reads if r.buffer.name not in own]
    return bool(inputs) and all(k in set(walk(r.region[-1].min)) for r in inputs)


def _warp_per_output(
    sch: Schedule,
    out: BlockRealize,
    producers: list[BlockRealize],
    reducer: BlockRealize,
    spatial: list[RV],
) -> None:
    """Matmul-like outputs with a long reduction: one warp per output element, its lanes
    splitting the reduction (16-byte loads where the length allows, contiguous across the
    lanes) and adding up their partial sums with a warp reduction; OUTPUT_WARPS warps per
    block. The weight's rows are read coalesced, once per output, which is what a GEMV
    (decode: one token, b tokens) needs; accumulators of the output's shape stay in a
    register of the warp, and the output is written by its first lane.

        blockIdx.x * W + threadIdx.y: output (i, j);  threadIdx.x: lane
          acc = warp_sum over lanes of sum over k = lane*v + 32*v*s, .. of x[i, k] * w[j, k]
          out[i, j] = epilogue(acc)
    """
    fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
    bx, ty = sch.split(fused, [None, OUTPUT_WARPS])
    sch.bind(bx, "blockIdx.x")
    sch.bind(ty, "threadIdx.y")
    for br in reversed(producers):
        p = sch.get_block(br.block.name)
        sch.compute_at(p, ty)
        sch.set_scope(p, 0, "local")
    acc = sch.get_block(reducer.block.name)
    red = reduction_vars(sch, reducer.block.name)
    k = [lp for lp in sch.get_loops(acc) if sch.get(lp).var in red][-1]
    lane, _ = _split_lanes(sch, k, 16 // _input_itemsize(reducer), WARP)
    sch.bind(lane, "threadIdx.x")


def _input_itemsize(br: BlockRealize) -> int:
    """The bytes of the widest input element the block reads (not its own accumulator)."""
    own = {w.buffer.name for w in br.block.writes}
    sizes = [itemsize(r.buffer.dtype) for r in br.block.reads if r.buffer.name not in own]
    return max(sizes, default=4)


def _cheap_elementwise(br: BlockRealize) -> bool:
    """A spatial block whose value calls no math function (prefill attention's causal mask)."""
    blk = br.block
    store = blk.body
    return (
        blk.init is None
        and isinstance(store, BufferStore)
        and all(iv.kind == "spatial" for iv in blk.iter_vars)
        and not any(isinstance(n, Call) for n in walk(store.value))
    )


def kv_group(func: PrimFunc) -> int:
    """Query heads per kv head of an attention PrimFunc: the constant its keys (the second
    input, [b, kv, m, d] or a position-major cache [m, b, kv, d]) are read at, `k[.., h //
    group, ..]`; 1 where they are read at no such index."""
    if len(func.params) < 3 or {len(func.params[0].shape), len(func.params[1].shape)} != {4}:
        return 1
    keys = func.params[1]
    for n in walk(func.body):
        if isinstance(n, BufferLoad) and n.buffer == keys:
            for e in n.indices:
                if isinstance(e, BinOp) and e.op == "floordiv" and isinstance(e.b, Const):
                    return int(e.b.value)
    return 1


def default_cuda_schedule(
    func: PrimFunc,
    arch: str = "",
    keyed_warps: int | None = None,
    cluster: int | None = None,
    group: int = 1,
) -> Schedule:
    """See the module docstring; the schedule's trace records every step. `cluster`
    overrides the blocks a decode row is split over (KEYED_CLUSTER from sm_90),
    `keyed_warps` the warps of a keyed row's block (KEYED_WARPS, or KEYED_CLUSTER_WARPS in a
    cluster); `keyed_warps` 0 schedules keyed rows like other rows (a thread per key).
    `group` the query heads a keyed row's block (or cluster) takes: 1, or `kv_group(func)`
    for a kv head's (the tuner's `default_grouped` sketch)."""
    if key_tiled(func):  # a prompt's attention: its rows fill the GPU, so a kv head's group
        return key_tiles_schedule(func, group=kv_group(func) if group == 1 else group)
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
    reducers = [br for br in (*producers, out) if _reduce_axes(br)]
    if len(reducers) == 1 and _long_reduction(reducers[0], out_rank):
        _warp_per_output(sch, out, producers, reducers[0], spatial)
        return sch
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
    acc_rank = len(producers[-1].block.writes[0].buffer.shape)
    keyed = red or (acc_rank == out_rank and _reduces(sch, producers[-1].block.name))
    if keyed and keyed_warps != 0:
        if cluster is None:  # one query token per (batch, head): too few rows to fill the GPU
            one_query = len(spatial) > 1 and _const_extent(sch, spatial[-2]) == 1
            cluster = KEYED_CLUSTER if one_query and sm_version(arch) >= 90 else 1
        if keyed_warps is None:
            keyed_warps = KEYED_CLUSTER_WARPS if cluster > 1 else KEYED_WARPS
        _keyed_rows(sch, out, producers, keyed_warps, cluster, group)
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
