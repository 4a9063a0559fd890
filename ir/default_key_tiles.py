"""The untuned GPU schedule of attention written in key tiles: scores recomputed per tile,
never stored whole, so a prompt of any length runs in a fixed amount of shared memory.

The form (`coordinator.kernels`, prefill) is softmax(q . k^T) . v in two passes over the
keys, each a plain reduction: the row's max over every key's score, then, with the max
known, the weights exp(s - max) summed against the values. The context sums one column
more than the head dim, a column of ones (so it carries the row's sum of weights), and the
output divides by it. Nothing needs a running max and a rescaled accumulator, at the cost of
scoring every key twice.

A block takes `rows` query tokens of a kv head's `group` query heads (they read the same
keys and values), THREADS threads:

    blockIdx.x: (batch, kv head, token tile)
      row_max[g, r] = block_max over keys j = tx, tx + T, ...:
                          s[g, r] = q[g, r, :] . k[j, :]     (a thread's key against every row)
      for each tile of TILE keys (j0):
        probs[g, r, t] = exp(q[g, r, :] . k[j0 + t, :] - row_max[g, r])   (thread t, every row)
        acc[g, r, c] += sum over t of probs[g, r, t] * (v[j0 + t, c] or 1 where c = d)
      out[g, r, c] = acc[g, r, c] / acc[g, r, d]

A tile's sums are rfactored over the tiles: each thread adds up its box of rows and
columns over the tile's keys in registers (reading a key's weights and a column's value
once for the box) and adds the box into the shared sums once per tile. A causal mask is a
select inside the max and the sums (adding the identity); a row always sees its own key.
Both key loops end at the block's last visible key (`prim_mask.trim_masked`), so a
prompt's blocks do about half the work of scoring every key. Scores stay in registers; the
block's queries (one copy per pass), the tile's weights and the rows' sums sit in shared
memory (group x rows x (d x 4 + TILE x 2 + (d + 1) x 4) bytes: 40.4 KB for Llama-3-8B's
heads, whatever the prompt's length).
"""

from __future__ import annotations

from .errors import ScheduleError
from .expr import Const
from .schedule import RV, Schedule
from .schedule_nest import init_before, loops_below, operand_copy, reduction_vars
from .schedule_tree import blocks, reduce_loop_vars
from .stmt import BlockRealize, PrimFunc

THREADS = 128  # threads of a block; a tile of keys has a thread per key
TILE = THREADS
ROWS = 8  # query tokens per block (times the group's heads)
WARP = 32
VEC = 8  # head-dim elements of a key or query read by one vector load


def key_tiled(func: PrimFunc) -> bool:
    """Whether `func` is the key-tiled form: an elementwise output of rank 4 over a
    reduction whose last dim is the output's plus one (the column of the weights' sum)."""
    realizes = [br for br, _ in blocks(func)]
    if len(realizes) < 2 or reduce_loop_vars(realizes[-1]):
        return False
    out, acc = (br.block.writes[0].buffer.shape for br in realizes[-2:][::-1])
    if len(out) != 4 or len(acc) != 4 or not reduce_loop_vars(realizes[-2]):
        return False
    last = (out[-1], acc[-1])
    return all(isinstance(e, Const) for e in last) and last[1].value == last[0].value + 1


def role_names(func: PrimFunc) -> dict[str, str]:
    """The names of the form's blocks by role (`form_blocks`); a one-line ScheduleError
    where `func` is not in key-tile form."""
    if not key_tiled(func):
        raise ScheduleError(
            f"{func.name} is not attention in key tiles (an output dividing by its "
            "accumulator's extra column); use default_cuda_schedule for other kernels"
        )
    return {k: br.block.name for k, br in form_blocks(func).items()}


def row_blocks(sch: Schedule, out: str, group: int, rows: int) -> tuple[RV, RV]:
    """The output's loops as the schedule's thread blocks: `rows` tokens of a kv head's
    `group` query heads a block (bound to blockIdx.x); returns (that loop, the block's
    fused loop over its heads, tokens and columns) for the caller to spread over threads."""
    z, hh, i, c = sch.get_loops(sch.get_block(out))
    hk, g = sch.split(hh, [None, group])
    it, ir = sch.split(i, [None, rows])
    sch.reorder(z, hk, it, g, ir, c)
    bx = sch.fuse(z, hk, it)
    sch.bind(bx, "blockIdx.x")
    return bx, sch.fuse(g, ir, c)


def rescored_block(func: PrimFunc) -> str:
    """The name of the block that scores the keys a second time (the weights' pass): its
    FLOPs repeat the first pass's, so counts of useful work leave it out."""
    return form_blocks(func)["again"].block.name


def form_blocks(func: PrimFunc) -> dict[str, BlockRealize]:
    """The form's blocks by role: out, acc, probs, max, the scores each pass reads, and the
    values with their column of ones ("values")."""
    realizes = [br for br, _ in blocks(func)]
    out, acc = realizes[-1], realizes[-2]
    reads = {br.block.name: {r.buffer.name for r in br.block.reads}
             - {br.block.writes[0].buffer.name} for br in realizes}  # fmt: skip
    writer = {br.block.writes[0].buffer.name: br for br in realizes}
    made = [writer[b] for b in sorted(reads[acc.block.name]) if b in writer]
    # the weights read the scores (another block's output); the values read the cache alone
    probs = next(br for br in made if reads[br.block.name] & set(writer))
    values = next(br for br in made if br is not probs)
    mx = next(br for br in realizes if br.block.name != acc.block.name and reduce_loop_vars(br)
              and len(br.block.writes[0].buffer.shape) == 3)  # fmt: skip
    scores = {
        role: next(writer[b] for b in reads[br.block.name] if b in writer and writer[b] is not mx)
        for role, br in (("first", mx), ("again", probs))
    }
    return {"out": out, "acc": acc, "probs": probs, "max": mx, "values": values, **scores}


def _rows_in_thread(sch: Schedule, name: str, at: RV, stage: RV | None = None) -> None:
    """Compute scores block `name` at `at` (a thread's key), for every row of the block:
    the head dim in steps of VEC outermost, each step's slice of the key and of a row's
    query read with one vector load into registers, so a key's element is read once for all
    the rows (whose scores sit in registers) and a query's once per VEC products. With
    `stage` (the block's loop) the block's queries are first copied into shared memory by
    all its threads, where every key tile reads them again.

        for g, r: for k: s[g, r] += q[g, r, k] * key[k]   ->
        q_s[g, r, :] = q[g, r, :]                          (with `stage`, once per block)
        for ko: key_l[:] = key[ko*VEC:][:VEC]
                for g, r (unrolled): q_l[:] = q_s[g, r, ko*VEC:][:VEC]
                                     for ki (unrolled): s[g, r] += q_l[ki] * key_l[ki]
    """
    s = sch.get_block(name)
    func = sch.mod
    q_name, k_name = func.params[0].name, func.params[1].name
    shared = None if stage is None else operand_copy(sch, s, q_name, "shared")
    if shared is not None:
        q_name = sch.get(shared).writes[0].buffer.name
    copies = {b: operand_copy(sch, s, b) for b in (k_name, q_name)}
    sch.compute_at(s, at)
    sch.set_scope(s, 0, "local")
    *rows, k = loops_below(sch, s, at)
    ko, ki = sch.split(k, [None, VEC])
    sch.reorder(ko, *rows, ki)
    for lp in (*rows, ki):
        sch.unroll(lp)
    init_before(sch, s, ko)
    for b, at_loop in ((k_name, ko), (q_name, rows[-1] if rows else ko)):
        copy = copies[b]
        if copy is None:
            continue
        sch.compute_at(copy, at_loop)
        *outer, inner = loops_below(sch, copy, at_loop)
        for lp in outer:
            sch.unroll(lp)
        sch.vectorize(inner)
    if shared is not None and stage is not None:
        sch.compute_at(shared, stage)
        *rows, cols = loops_below(sch, shared, stage)
        c, vec = sch.split(cols, [None, VEC])
        _, tx = sch.split(fused_loop(sch, [*rows, c]), [None, THREADS])
        sch.bind(tx, "threadIdx.x")
        sch.vectorize(vec)


def fused_loop(sch: Schedule, loops: list[RV]) -> RV:
    """`loops` fused into one (the loop itself when there is one)."""
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


def _shared_sums(sch: Schedule, acc: RV) -> RV:
    """The context and the weights' sum added into shared memory at every key of a tile:
    warps over the rows, lanes over the columns; the tile loop."""
    *arows, ac, aj = sch.get_loops(acc)[1:]
    ro, w = sch.split(fused_loop(sch, arows), [None, THREADS // WARP])
    co, lane = sch.split(ac, [None, WARP])
    jo, ji = sch.split(aj, [None, TILE])
    sch.reorder(jo, w, lane, ro, co, ji)
    sch.bind(sch.fuse(w, lane), "threadIdx.x")
    return jo


def tile_partials(sch: Schedule, acc: RV, rf: RV, warps_on_y: bool = False) -> RV:
    """A tile's context and weights' sum in registers, added into the shared sums once per
    tile: a warp takes a quarter of the tokens (every head of the group), a lane a run of
    contiguous columns, so a thread's partial sums are one small box (40 floats for
    Llama-3-8B) and each key's weights and values are read once for all of it. The
    threads are threadIdx.x, or with `warps_on_y` the warps threadIdx.y and their lanes
    threadIdx.x (where tensor-core steps share the block).

        for jo: for (w, lane): rf[g, r, c] = sum over t of probs[g, r, t] * v'[t, c]
                                acc[g, r, c] += rf[g, r, c]
    for r in w's tokens, c in lane's columns; returns the tile loop."""
    *heads, ai, ac, jo = sch.get_loops(acc)[1:]
    w, ro = sch.split(ai, [THREADS // WARP, None])
    lane, co = sch.split(ac, [WARP, None])
    sch.reorder(jo, w, lane, *heads, ro, co)
    if warps_on_y:
        sch.bind(w, "threadIdx.y")
        sch.bind(lane, "threadIdx.x")
        tx = lane
    else:
        tx = sch.fuse(w, lane)
        sch.bind(tx, "threadIdx.x")
    sch.compute_at(rf, tx)
    sch.set_scope(rf, 0, "local")
    below = loops_below(sch, rf, tx)
    red = reduction_vars(sch, sch.get(rf).name)
    keys = [lp for lp in below if sch.get(lp).var in red]
    box = [lp for lp in below if sch.get(lp).var not in red]
    if box:  # a column's value is read once for every row of the box
        sch.reorder(*keys, box[-1], *box[:-1])
    for lp in box:
        sch.unroll(lp)
    init_before(sch, rf, keys[0])
    weights, values = operand_copy(sch, rf, "probs"), operand_copy(sch, rf, sch.mod.params[2].name)
    for copy, at in ((weights, keys[-1]), (values, box[-1] if box else keys[-1])):
        if copy is None:
            continue
        sch.compute_at(copy, at)
        for lp in loops_below(sch, copy, at):
            sch.unroll(lp)
    return jo


def key_tiles_schedule(
    func: PrimFunc, group: int = 1, rows: int = ROWS, partials: bool = True, trim: bool = True
) -> Schedule:
    """The schedule the module docstring draws; `group` query heads share a block's keys
    (`default_schedule_cuda.kv_group`), `rows` query tokens of each. With `partials` a tile's
    sums are rfactored into registers (`tile_partials`); without, each step adds into the
    shared sums. With `trim` both key loops stop at the block's last visible key
    (`trim_masked`): a causal prompt's blocks skip the keys above the diagonal."""
    roles = role_names(func)
    sch = Schedule(func)
    sch.compute_inline(sch.get_block(roles["values"]))  # a value or 1, read where summed
    rf = None
    if partials:  # acc[.., c] = sum over tiles jo of rf[jo, .., c], itself a sum over the tile
        *_, aj = sch.get_loops(sch.get_block(roles["acc"]))
        jo, _ = sch.split(aj, [None, TILE])
        rf = sch.rfactor(jo, 0)
    bx, cells = row_blocks(sch, roles["out"], group, rows)
    _, tx = sch.split(cells, [None, THREADS])
    sch.bind(tx, "threadIdx.x")

    acc = sch.get_block(roles["acc"])
    sch.compute_at(acc, bx)
    sch.set_scope(acc, 0, "shared")
    jo = tile_partials(sch, acc, rf) if rf is not None else _shared_sums(sch, acc)

    # a tile's weights: a thread per key, every row
    probs = sch.get_block(roles["probs"])
    sch.compute_at(probs, jo)
    sch.set_scope(probs, 0, "shared")
    *prows, pj = sch.get_loops(probs)[2:]
    sch.reorder(pj, *prows)
    sch.bind(pj, "threadIdx.x")
    for lp in prows:
        sch.unroll(lp)
    _rows_in_thread(sch, roles["again"], pj, bx)

    # the rows' max over every key: a thread per key, a block reduction per row
    mx = sch.get_block(roles["max"])
    sch.compute_at(mx, bx)
    sch.set_scope(mx, 0, "shared")
    *mrows, mj = sch.get_loops(mx)[1:]
    mo, mtx = sch.split(mj, [None, THREADS])
    sch.reorder(mtx, mo, *mrows)
    sch.bind(mtx, "threadIdx.x")
    for lp in mrows:
        sch.unroll(lp)
    _rows_in_thread(sch, roles["first"], mo, bx)
    if trim:
        sch.trim_masked(mo)
        sch.trim_masked(jo)
    return sch
