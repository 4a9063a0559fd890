"""Loop primitives: split, fuse, reorder, and the loop kinds (parallel, vectorize, unroll, bind).

`check_races` is the invariant the loop kinds must keep; `Schedule` runs it after every
primitive that changes the function.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

from .errors import ScheduleError
from .expr import Buffer, Const, Expr, Var, binop, const, logical_and
from .instruction_traits import primitive
from .lower import cross_thread_reduction
from .schedule_state import ScheduleState
from .schedule_tree import (
    blocks,
    map_stmt,
    reads_of,
    reduce_loop_vars,
    reduction_update,
    spatial_loop_vars,
    store_of,
    writes_of,
)
from .simplify import simplify
from .stmt import THREAD_TAGS, TRUE, Block, BlockRealize, For, PrimFunc, Stmt
from .trace import RV
from .visit import substitute, walk

SIMD_REDUCE_DTYPES = ("float32", "int32", "int64")


@primitive(results="list")
def split(state: ScheduleState, loop: RV, factors: Sequence[int | RV | None]) -> list[RV]:
    """Split a loop into len(factors) nested loops (outermost first).

    One factor may be None and is inferred. When the factors' product exceeds the extent
    (or the extent is symbolic) the blocks below get the guard `fused < extent`.

        for i in range(10): B[i] = ...        split(i, [None, 4]) ->
        for i_0 in range(3): for i_1 in range(4): if i_0*4 + i_1 < 10: B[i_0*4 + i_1] = ...
    """
    lp, _ = state.loop(loop)
    vals = [None if f is None else state.value(f) for f in factors]
    if len(vals) < 2:
        raise ScheduleError("split needs at least two factors")
    if sum(v is None for v in vals) > 1:
        raise ScheduleError("at most one split factor may be None (inferred)")
    if any(v is not None and (not isinstance(v, int) or v <= 0) for v in vals):
        raise ScheduleError(f"split factors must be positive ints, got {vals}")
    known = 1
    for v in vals:
        if v is not None:
            known *= v
    ext = simplify(lp.extent)
    exts: list[Expr]
    if None in vals:
        if isinstance(ext, Const):
            inferred: Expr = const(-(-int(ext.value) // known))
        else:
            inferred = simplify(binop("floordiv", ext + (known - 1), known))
        exts = [inferred if v is None else const(v) for v in vals]
    else:
        if not isinstance(ext, Const):
            raise ScheduleError(
                f"loop {lp.var.name} has symbolic extent {ext}; make one factor None to infer it"
            )
        if known < int(ext.value):
            raise ScheduleError(
                f"factors {vals} multiply to {known}, less than the extent "
                f"{ext.value} of {lp.var.name}"
            )
        exts = [const(v) for v in vals]  # type: ignore[arg-type]
    names = state.names()
    new_vars = [Var(names.fresh(f"{lp.var.name}_{i}")) for i in range(len(exts))]
    fused: Expr = new_vars[0]
    for v, e in zip(new_vars[1:], exts[1:], strict=True):
        fused = fused * e + v
    fused = simplify(fused)
    prod = simplify(product(exts))
    perfect = isinstance(prod, Const) and isinstance(ext, Const) and prod.value == ext.value
    guard = None if perfect else binop("lt", fused, ext)
    body = substitute_realizes(lp.body, {lp.var: fused}, guard)
    nest: Stmt = body
    for v, e in reversed(list(zip(new_vars, exts, strict=True))):
        nest = For(v, e, nest)
    state.replace_loop(lp, nest)
    return [state.new("l", v.name) for v in new_vars]


@primitive(results="one")
def fuse(state: ScheduleState, *loops: RV) -> RV:
    """Fuse perfectly nested consecutive loops into one (outer to inner order).

    for i in range(4): for j in range(8): B[i, j] = ...        fuse(i, j) ->
    for i_j_fused in range(32): B[i_j_fused // 8, i_j_fused % 8] = ...
    """
    if len(loops) < 2:
        raise ScheduleError("fuse needs at least two loops")
    found = [state.loop(lp)[0] for lp in loops]
    for outer, inner in itertools.pairwise(found):
        if outer.body is not inner and outer.body != inner:
            raise ScheduleError(
                f"loops {outer.var.name} and {inner.var.name} are not perfectly "
                "nested one inside the other"
            )
    fused_vars = {lp.var for lp in found}
    for n in walk(found[-1].body):
        if isinstance(n, BlockRealize):
            sp = fused_vars & spatial_loop_vars(n)
            rd = fused_vars & reduce_loop_vars(n)
            idle = fused_vars - sp - rd
            if idle and (sp or rd):
                raise ScheduleError(
                    f"block {n.block.name!r} does not depend on loop "
                    f"{sorted(v.name for v in idle)[0]} but does on the others; fused, "
                    "the block would repeat inside one loop it depends on"
                )
            if sp and rd:
                raise ScheduleError(
                    f"cannot fuse spatial loop {sorted(v.name for v in sp)[0]} with "
                    f"reduction loop {sorted(v.name for v in rd)[0]} of block "
                    f"{n.block.name!r}: its init would no longer run first"
                )
    names = state.names()
    fv = Var(names.fresh("_".join(lp.var.name for lp in found) + "_fused"))
    exts = [simplify(lp.extent) for lp in found]
    mapping: dict[Var, Expr] = {}
    stride: Expr = const(1)
    for lp, e in reversed(list(zip(found, exts, strict=True))):
        q = fv if stride == const(1) else binop("floordiv", fv, stride)
        if e == const(1):
            mapping[lp.var] = const(0)  # a unit loop contributes nothing
        else:
            mapping[lp.var] = q if lp is found[0] else binop("floormod", q, e)
        stride = simplify(stride * e)
    total = simplify(product(exts))
    ranges = {fv: (0, int(total.value) - 1)} if isinstance(total, Const) else {}
    mapping = {k: simplify(v, ranges) for k, v in mapping.items()}
    body = substitute_realizes(found[-1].body, mapping, None, ranges)
    state.replace_loop(found[0], For(fv, total, body))
    return state.new("l", fv.name)


@primitive()
def reorder(state: ScheduleState, *loops: RV) -> None:
    """Reorder loops of one perfectly nested chain; loops not named keep their places.

    for i: for j: for k: C[i, j] += ...        reorder(k, i) ->
    for k: for j: for i: C[i, j] += ...
    """
    found = [state.loop(lp) for lp in loops]
    names = [f.var.name for f, _ in found]
    if len(set(names)) != len(names):
        raise ScheduleError(f"reorder got a loop twice: {names}")
    outer_f, _outer_anc = min(found, key=lambda x: len(x[1]))
    chain: list[For] = []
    cur: Stmt = outer_f
    wanted = set(names)
    while isinstance(cur, For):
        chain.append(cur)
        wanted.discard(cur.var.name)
        if not wanted:
            break
        cur = cur.body
        if not isinstance(cur, For):
            raise ScheduleError(
                f"loops {', '.join(names)} are not in one perfectly nested chain "
                "(a loop body holds "
                "more than one statement)"
            )
    if wanted:
        raise ScheduleError(f"loops {sorted(wanted)} are not nested under {outer_f.var.name}")
    positions = [i for i, lp in enumerate(chain) if lp.var.name in names]
    by_name = {lp.var.name: lp for lp in chain}
    new_chain = list(chain)
    for pos, name in zip(positions, names, strict=True):
        new_chain[pos] = by_name[name]
    inner_body = chain[-1].body
    nest: Stmt = inner_body
    for lp in reversed(new_chain):
        nest = dataclasses.replace(lp, body=nest)
    state.replace_loop(outer_f, nest)


@primitive()
def parallel(state: ScheduleState, loop: RV) -> None:
    """Run the loop's iterations on parallel threads (OpenMP on the CPU).

    for i in range(64): ...        parallel(i) ->        for i in range(64):  # parallel
    """
    set_kind(state, loop, "parallel")


@primitive()
def vectorize(state: ScheduleState, loop: RV) -> None:
    """Mark an innermost loop for SIMD execution.

    for j in range(16): B[j] = ...        vectorize(j) ->
    for j in range(16):  # vectorized
    """
    set_kind(state, loop, "vectorized")


@primitive()
def unroll(state: ScheduleState, loop: RV) -> None:
    """Ask the compiler to unroll the loop.

    for k in range(4): ...        unroll(k) ->        for k in range(4):  # unrolled
    """
    set_kind(state, loop, "unrolled")


@primitive()
def bind(state: ScheduleState, loop: RV, thread: str) -> None:
    """Bind the loop to a GPU thread axis (blockIdx.x, threadIdx.x, ...).

    for i in range(128): ...        bind(i, "threadIdx.x") ->
    for i in range(128):  # bound to threadIdx.x
    """
    if thread not in THREAD_TAGS:
        raise ScheduleError(f"unknown thread axis {thread!r}; known: {', '.join(THREAD_TAGS)}")
    set_kind(state, loop, "thread_binding", thread)


def set_kind(state: ScheduleState, loop: RV, kind: str, thread: str | None = None) -> None:
    """Give a loop another kind (and thread axis); only innermost loops vectorize."""
    lp, _ = state.loop(loop)
    if kind == "vectorized" and any(isinstance(n, For) for n in walk(lp.body)):
        raise ScheduleError(
            f"cannot vectorize loop {lp.var.name}: only innermost loops can be vectorized"
        )
    state.replace_loop(lp, dataclasses.replace(lp, kind=kind, thread=thread))


RACE_KINDS = ("parallel", "vectorized", "thread_binding")


def check_races(func: PrimFunc) -> None:
    """Refuse any state where iterations of a parallel, vectorized or thread-bound loop
    would race: a block iterating its reduction over such a loop, or a block that does not
    depend on the loop writing a buffer that is not private to it.

    Runs after every primitive, so it visits statements only (never expressions) in one
    pass; where several races exist, the one of the outermost-first loop, then the first
    block under it, is reported.
    """
    found = blocks(func)
    order: dict[Var, int] = {}  # racing loops in program order (outer before inner)
    under: dict[Var, set[str]] = {}  # the blocks under each racing loop
    for br, loops in found:
        for lp in loops:
            if lp.kind in RACE_KINDS:
                order.setdefault(lp.var, len(order))
                under.setdefault(lp.var, set()).add(br.block.name)
    races: list[tuple[int, int, str]] = []
    users: dict[Buffer, set[str]] | None = None
    for at, (br, loops) in enumerate(found):
        racing = [lp for lp in loops if lp.kind in RACE_KINDS]
        if not racing:
            continue
        reduced, spatial = reduce_loop_vars(br), spatial_loop_vars(br)
        for lp in racing:
            kind = {"thread_binding": "thread-bound"}.get(lp.kind, lp.kind)
            name = br.block.name
            if lp.var in reduced:
                if cross_thread_reduction(lp, br):
                    continue  # lowered to a combine across the threads of the axis
                reason = (
                    simd_reduction(lp, br)
                    if lp.kind == "vectorized"
                    else "so iterations would race on the same output"
                )
                if reason is not None:
                    msg = f"{kind} loop {lp.var.name} would iterate the reduction of block "
                    races.append((order[lp.var], at, f"{msg}{name!r}, {reason}"))
                continue
            if lp.var in spatial:
                continue
            users = buffer_users(found) if users is None else users
            if not private_under(func, br.block, under[lp.var], users):
                msg = (
                    f"block {name!r} does not depend on {kind} loop {lp.var.name} and writes "
                    "a buffer shared across its iterations, so they would race"
                )
                races.append((order[lp.var], at, msg))
    if races:
        raise ScheduleError(min(races)[2])


def buffer_users(found: list[tuple[BlockRealize, tuple[For, ...]]]) -> dict[Buffer, set[str]]:
    """The names of the blocks that read or write each buffer."""
    users: dict[Buffer, set[str]] = {}
    for br, _ in found:
        for buf in reads_of(br.block) | writes_of(br.block):
            users.setdefault(buf, set()).add(br.block.name)
    return users


def private_under(
    func: PrimFunc, blk: Block, under: set[str], users: dict[Buffer, set[str]]
) -> bool:
    """True when everything `blk` writes is an intermediate used only by the blocks
    `under` a loop.

    Lowering then allocates it inside the loop, so each iteration has its own copy and a
    block that does not depend on the loop variable cannot race.
    """
    return all(buf not in func.params and users.get(buf, set()) <= under for buf in writes_of(blk))


def simd_reduction(lp: For, br: BlockRealize) -> str | None:
    """None when a vectorized loop over a reduction can become an OpenMP simd reduction,
    else why not: the loop must hold just this block, with its init decomposed away, updating
    `C[idx] = C[idx] (+|max|min) e` in float32, int32 or int64."""
    if lp.body is not br and lp.body != br:
        return "and a vectorized reduction loop must hold only that block"
    blk = br.block
    if blk.init is not None:
        return "whose init runs inside it; decompose_reduction first"
    store = store_of(blk)
    if store is None or reduction_update(store) is None:
        return "which is not a C = C + e (or max, min) update"
    if store.buffer.dtype not in SIMD_REDUCE_DTYPES:
        return f"and a {store.buffer.dtype} accumulator cannot be a simd reduction"
    return None


def product(exts: Sequence[Expr]) -> Expr:
    """The product of `exts` as an expression (1 for none)."""
    out: Expr = const(1)
    for e in exts:
        out = out * e
    return out


def substitute_realizes(
    body: Stmt,
    mapping: dict[Var, Expr],
    guard: Expr | None,
    ranges: dict[Var, tuple[int, int]] | None = None,
) -> Stmt:
    """Substitute loop variables in block bindings (and extents), adding `guard` to predicates."""

    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize):
            values = tuple(simplify(substitute(v, mapping), ranges) for v in s.iter_values)
            pred = substitute(s.predicate, mapping)
            if guard is not None:
                pred = guard if pred == TRUE else logical_and(pred, guard)
            return BlockRealize(values, pred, s.block)
        if isinstance(s, For):
            ext = substitute(s.extent, mapping)
            if ext is not s.extent:
                return dataclasses.replace(s, extent=ext, body=map_stmt(s.body, fix))
        return None

    return map_stmt(body, fix)
