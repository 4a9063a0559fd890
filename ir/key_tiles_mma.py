"""Prefill attention in key tiles on tensor cores (mma.sync m16n8k16): the scores of both
passes and the weighted sums.

The form and its two passes are `default_key_tiles`'s; what changes is how a tile's
products are computed. The block's warps compute the tile's score matrix, rows x TILE keys,
with `mma.sync` from fragments loaded by `ldmatrix` (the block's queries and the tile's keys
sit in shared memory) and store it into a float32 tile in shared memory, from which the
pass reads it; the weights pass then adds the tile's weights times its values (the form's
`v_ones`: the values and a column of ones, which carries the weights' sum) into
accumulator fragments that live across the tiles:

    blockIdx.x: (batch, kv head, 16 tokens);  threadIdx.y: warp;  threadIdx.x: lane
      for each tile of TILE keys (j0):                            (max pass)
        S[g, r, t] = q[g, r, :] . k[j0 + t, :]   warps (head, share of t) x 16 rows, mma.sync
        tile_max[g, r] = max over t of S          lanes over t, a warp reduction per row
        row_max[g, r] = max(row_max[g, r], tile_max[g, r])
      acc = 0 (fragments: a warp's head, 16 rows x its share of the padded columns)
      for each tile of TILE keys (j0):                            (weights pass)
        S[g, r, t] = q[g, r, :] . k[j0 + t, :]   as above
        probs[g, r, t] = visible ? exp(S - row_max) : 0        a thread per key
        v_s[t, c] = v_ones[j0 + t, c]            the tile's values, [key, column] in shared
        acc[g, r, :] += mma(probs[g, r, :], v_s)  (ldmatrix .trans for the values)
      out[g, r, c] = acc[g, r, c] / acc[g, r, d]

A warp's 16 rows are 16 tokens of one query head, so a block takes ROWS = 16 tokens of a kv
head's group of query heads and its WARPS warps split the group's heads and the tile's keys
or columns (4 heads of Llama-3-8B: a warp per head, all 64 keys of the tile, all 144
columns: d + 1 padded to whole fragments by `pad_spatial`). The sums' causal mask moves into
the weights (`mask_into_producer`, after `trim_masked` has read it), so the sum is a plain
product; the keys past the cache in the last tile lie along the MMA's reduction, so the
weights there are written as 0 and the values read at a clamped key
(`pass_tensor_operands`). With `sums=False` the weighted sums stay on the SIMT cores
(`default_key_tiles.tile_partials` with the warps on threadIdx.y).
"""

from __future__ import annotations

from .default_key_tiles import WARP, fused_loop, role_names, row_blocks, tile_partials
from .errors import ScheduleError
from .expr import Const
from .schedule import RV, Schedule
from .schedule_nest import init_before, loops_below, operand_copy
from .stmt import PrimFunc

TILE = 64  # keys of a tile: 2 blocks of 4 warps fit a multiprocessor at Llama-3-8B's heads
WARPS = 4  # warps of a block (threadIdx.y), 32 lanes each (threadIdx.x)
ROWS = 16  # query tokens of a block: one 16-row fragment per head
FRAG = 16  # the side of an mma.sync tile (m16n8k16 twice)
PAD = 8  # elements added to each shared tile's row, so 8 rows of a fragment hit distinct banks
MMA = {"float16": "mma_m16n8k16_f16_f32", "bfloat16": "mma_m16n8k16_bf16_f32"}


def _head_dim(sch: Schedule) -> int:
    """The head dim: the queries' last extent."""
    return int(sch.mod.params[0].shape[-1].value)  # type: ignore[attr-defined]


def _threads(sch: Schedule, loop: RV) -> tuple[RV, RV]:
    """Spread `loop` over the block's WARPS x WARP threads (threadIdx.y, threadIdx.x), the
    rest an outer loop of each thread; returns (warp, lane)."""
    _, ty, tx = sch.split(loop, [None, WARPS, WARP])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    return ty, tx


def _pad_rows(sch: Schedule, block: RV, row_len: int) -> None:
    """Pad the rows of the shared tile `block` writes by PAD elements: the 8 rows a fragment
    load or store touches at once then start in distinct banks."""
    rank = len(sch.get(block).writes[0].buffer.shape)
    sch.storage_align(block, 0, rank - 2, row_len, PAD)


def _shared_accumulator(sch: Schedule, block: RV, at: RV, row_len: int) -> RV:
    """Accumulate `block` in `mma.accumulator` fragments, written back at loop `at` into a
    float32 tile in shared memory (rows of `row_len` padded); returns the write-back."""
    frag = sch.cache_write(block, 0, "mma.accumulator")
    sch.compute_at(frag, at)
    sch.set_scope(frag, 0, "shared")
    _pad_rows(sch, frag, row_len)
    return frag


def _store_fragments(sch: Schedule, frag: RV, at: RV, warps_n: int) -> None:
    """The write-back `frag` (under `at`) as each warp's fragment stores: the warps over the
    heads and `warps_n` shares of the columns, 16 x 16 tiles."""
    *heads, rows, cols = loops_below(sch, frag, at)
    wn, fn, cc = sch.split(cols, [warps_n, None, FRAG])
    sch.reorder(*heads, wn, fn, rows, cc)
    sch.bind(fused_loop(sch, [*heads, wn]), "threadIdx.y")
    sch.unroll(fn)
    sch.tensorize(rows, "mma_store_f32")


def _fragment_rows(sch: Schedule, frag: RV, at: RV) -> RV:
    """An operand's fragment copy under loop `at`, its rows in 16-row tiles; returns the
    loop to tensorize with an ldmatrix (rows x k tiles, contiguous along k)."""
    sch.compute_at(frag, at)
    rows, _ = loops_below(sch, frag, at)[-2:]
    f, tile = sch.split(rows, [None, FRAG])
    sch.unroll(f)
    return tile


def _copy_tile(sch: Schedule, tile: RV, at: RV, row_len: int, wide: bool = True) -> None:
    """A shared tile filled under loop `at` by all the block's threads, 8 elements a thread
    and step (one 16-byte access where `wide`), its rows padded."""
    sch.compute_at(tile, at)
    _pad_rows(sch, tile, row_len)
    *lead, cols = loops_below(sch, tile, at)
    c, vec = sch.split(cols, [None, 8])
    _threads(sch, fused_loop(sch, [*lead, c]))
    if wide:
        sch.vectorize(vec)
    else:
        sch.unroll(vec)


def _mma_scores(sch: Schedule, name: str, at: RV, stage: RV, group: int) -> None:
    """Compute scores block `name` for the tile of keys of loop `at` on tensor cores into a
    float32 tile in shared memory: the block's queries copied into shared memory at `stage`
    (the block's loop), the tile's keys at `at`, each 16-wide step of the head dim loaded
    into fragments and multiplied; a warp holds its 16 rows x TILE / (WARPS / group) keys.

        for g, r, t: for k: s[g, r, t] += q[g, r, k] * key[t, k]   ->
        q_s = q (at stage); k_s = key tile (at at)
        warp (g, w): for ko: a = ldmatrix(q_s[g, :, ko]); b[f] = ldmatrix(k_s[w, f, ko])
                             acc[f] += mma(a, b[f])  (f over the warp's 16-key fragments)
        s_shared[g, :, w's keys] = acc
    """
    s = sch.get_block(name)
    func = sch.mod
    q_name, k_name = func.params[0].name, func.params[1].name
    q_tile = operand_copy(sch, s, q_name, "shared")
    k_tile = operand_copy(sch, s, k_name, "shared")
    frag_out = _shared_accumulator(sch, s, at, TILE)
    sch.compute_at(s, at)
    *g, r, t, k = loops_below(sch, s, at)  # no head loop where the group is one head
    warps_n = WARPS // group
    wn, fn, tt = sch.split(t, [warps_n, None, FRAG])
    ko, kx = sch.split(k, [None, FRAG])
    sch.reorder(*g, wn, ko, fn, r, tt, kx)
    sch.bind(fused_loop(sch, [*g, wn]), "threadIdx.y")
    sch.unroll(fn)
    for operand, (scope, intrin) in enumerate(
        (("mma.matrix_a", "ldmatrix_a_x4"), ("mma.matrix_b", "ldmatrix_b_x4"))
    ):
        sch.tensorize(_fragment_rows(sch, sch.cache_read(s, operand, scope), ko), intrin)
    init = init_before(sch, s, ko)
    sch.tensorize(sch.get_loops(init)[-2], "mma_fill_f32")
    sch.tensorize(r, MMA[func.params[0].dtype])
    _store_fragments(sch, frag_out, at, warps_n)
    # the operands: the queries once per block, the keys once per tile, 16 bytes a thread
    for tile, where in ((q_tile, stage), (k_tile, at)):
        _copy_tile(sch, tile, where, _head_dim(sch))


def _sums_tiles(
    sch: Schedule, acc_name: str, values: RV, frags: tuple[RV, RV], bx: RV, group: int, cols: int
) -> tuple:
    """The weighted sums as tensor-core tiles, their loops laid out: acc[g, r, c] over the
    tile loop jo (outermost: the fragments hold the sums across the tiles), each warp a
    head (and share of the `cols` padded columns), 16-wide steps of the tile's keys; the
    values' tile (`values`, the padded copy) in shared memory per tile, and the operands'
    fragment copies (`frags`) under each key step. Returns (jo, the 16-row loop, the two
    fragment loads' loops) for `_sums_fragments` to tensorize after the trim."""
    warps_n = WARPS // group
    acc = sch.get_block(acc_name)
    frag = _shared_accumulator(sch, acc, bx, cols)
    sch.compute_at(acc, bx)
    *g, r, c, k = loops_below(sch, acc, bx)
    jo, kt = sch.split(k, [None, TILE])
    wn, fc, cc = sch.split(c, [warps_n, None, FRAG])
    kk, kx = sch.split(kt, [None, FRAG])
    sch.reorder(jo, *g, wn, kk, fc, r, cc, kx)
    sch.bind(fused_loop(sch, [*g, wn]), "threadIdx.y")
    sch.unroll(fc)
    # each 16-wide key step's weights and values into fragments (the values' tile is
    # [key, column]: ldmatrix .trans)
    fa, fb = frags
    fr = _fragment_rows(sch, fa, kk)
    sch.compute_at(fb, kk)
    keys, bcols = loops_below(sch, fb, kk)[-2:]
    f, fbc = sch.split(bcols, [None, FRAG])
    sch.reorder(f, fbc, keys)
    sch.unroll(f)
    # the sums into the shared float32 tile once, after the last tile
    _store_fragments(sch, frag, bx, warps_n)
    # the tile's values (and the column of ones, a select: no wide access) in shared memory
    sch.set_scope(values, 0, "shared")
    _copy_tile(sch, values, jo, cols, wide=False)
    return jo, r, fr, fbc


def _sums_fragments(sch: Schedule, acc_name: str, at: tuple) -> None:
    """The weighted sums' MMAs, after the trim and `mask_into_producer` (the sum is a plain
    product now): the sums zeroed in their fragments before the tiles."""
    jo, r, load_a, load_b = at
    sch.tensorize(load_a, "ldmatrix_a_x4")
    sch.tensorize(load_b, "ldmatrix_b_x4")
    acc = sch.get_block(acc_name)
    init = init_before(sch, acc, jo)
    sch.tensorize(sch.get_loops(init)[-2], "mma_fill_f32")
    sch.tensorize(r, MMA[sch.mod.params[0].dtype])


def key_tiles_mma_schedule(
    func: PrimFunc, group: int = 1, trim: bool = True, sums: bool = True
) -> Schedule:
    """The module docstring's schedule: `group` query heads of a kv head share a block's
    keys (1, 2 or 4: a warp per head and share of the tile's keys), ROWS tokens each. With
    `sums` the weighted sums run on tensor cores too (`_sums_tiles`), else on the SIMT
    cores (`tile_partials`)."""
    roles = role_names(func)
    dtype = func.params[0].dtype
    d = func.params[0].shape[-1]
    if dtype not in MMA or not isinstance(d, Const) or int(d.value) % FRAG:
        raise ScheduleError(
            f"{func.name}: tensor-core key tiles need fp16 or bf16 queries and a head dim "
            f"that is a multiple of {FRAG} (got {dtype}, {d}); use key_tiles_schedule"
        )
    if group not in (1, 2, 4):
        raise ScheduleError(
            f"{func.name}: tensor-core key tiles take 1, 2 or 4 query heads a block (a warp "
            f"per head and key share), got {group}; use key_tiles_schedule"
        )
    sch = Schedule(func)
    cols = int(d.value) + 1  # the context's columns and the weights' sum
    if sums:  # columns padded to whole fragments per warp; out reads the padded sums
        step = FRAG * (WARPS // group)
        padding = [0] * len(sch.get(sch.get_block(roles["acc"])).iter_vars)
        padding[3] = -cols % step
        cols += padding[3]
        values, write_back = sch.pad_spatial(sch.get_block(roles["acc"]), padding)
        sch.compute_inline(sch.get_block(roles["values"]))
        sch.compute_inline(write_back)
        acc = sch.get_block(roles["acc"])  # its operands' fragments, before anything moves
        frags = tuple(
            operand_copy(sch, acc, sch.get(b).writes[0].buffer.name, scope)
            for b, scope in ((sch.get_block(roles["probs"]), "mma.matrix_a"),
                             (values, "mma.matrix_b"))
        )  # fmt: skip
    else:
        sch.compute_inline(sch.get_block(roles["values"]))
        # acc[.., c] = sum over tiles jo of rf[jo, .., c], itself a sum over a tile
        *_, aj = sch.get_loops(sch.get_block(roles["acc"]))
        jo, _ = sch.split(aj, [None, TILE])
        rf = sch.rfactor(jo, 0)
    # the rows' max: row_max = max over tiles mo of tile_max[mo], itself a max over a tile
    *_, mj = sch.get_loops(sch.get_block(roles["max"]))
    mo, _ = sch.split(mj, [None, TILE])
    mrf = sch.rfactor(mo, 0)

    bx, cells = row_blocks(sch, roles["out"], group, ROWS)
    _threads(sch, cells)

    if sums:
        at = _sums_tiles(sch, roles["acc"], values, frags, bx, group, cols)  # type: ignore[arg-type]
        jo = at[0]
    else:
        acc = sch.get_block(roles["acc"])
        sch.compute_at(acc, bx)
        sch.set_scope(acc, 0, "shared")
        jo = tile_partials(sch, acc, rf, warps_on_y=True)

    # a tile's weights: a thread per key, every row
    probs = sch.get_block(roles["probs"])
    sch.compute_at(probs, jo)
    sch.set_scope(probs, 0, "shared")
    *prows, pr, pj = loops_below(sch, probs, jo)
    share, pr = sch.split(pr, [WARPS * WARP // TILE, None])  # the threads a key has left
    sch.reorder(pj, share, *prows, pr)
    _threads(sch, sch.fuse(pj, share))
    for lp in (*prows, pr):
        sch.unroll(lp)
    _mma_scores(sch, roles["again"], jo, bx, group)

    # the rows' max, tile by tile: a tile's max per row is a warp reduction over its keys
    mx = sch.get_block(roles["max"])
    sch.compute_at(mx, bx)
    sch.set_scope(mx, 0, "shared")
    *mg, mr, mo = loops_below(sch, mx, bx)
    sch.reorder(mo, *mg, mr)
    for lp in mg:
        sch.bind(lp, "threadIdx.y")  # a warp per head, a lane per token
    sch.bind(mr, "threadIdx.x")
    sch.compute_at(mrf, mo)
    sch.set_scope(mrf, 0, "shared")
    *tg, tr, tk = loops_below(sch, mrf, mo)[-2 - len(mg) :]
    tw, tl = sch.split(tk, [None, WARP])
    sch.reorder(*tg, tl, tw, tr)
    for lp in tg:  # a warp per head: its lanes over the tile's keys, each with a running
        sch.bind(lp, "threadIdx.y")  # max per token, then a warp max per token
    sch.bind(tl, "threadIdx.x")
    sch.unroll(tr)
    _mma_scores(sch, roles["first"], mo, bx, group)
    if trim:
        sch.trim_masked(mo)
        sch.trim_masked(jo)
    if sums:
        sch.mask_into_producer(sch.get_block(roles["acc"]))
        _sums_fragments(sch, roles["acc"], at)
    return sch
