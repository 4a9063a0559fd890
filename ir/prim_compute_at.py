"""Compute-location primitives: compute_at moves a producer under a loop of its consumers,
reverse_compute_at a consumer under a loop of its producer; both compute only the region
needed (or produced) there."""

from __future__ import annotations

import dataclasses

from .errors import ScheduleError
from .expr import BinOp, Buffer, BufferLoad, Const, Expr, Var, binop, const, logical_and
from .instruction_traits import primitive
from .lower import dim_window
from .schedule_state import ScheduleState
from .schedule_tree import (
    EMPTY,
    blocks,
    children,
    find_loop,
    is_identity_write,
    loop_ranges,
    loop_vars_in,
    make_seq,
    map_stmt,
    reads_of,
    reduce_loop_vars,
    root_body,
    store_of,
    top_index,
    with_root,
    writes_of,
)
from .simplify import conjuncts, from_linear, linear, prove, simplify
from .stmt import TRUE, Block, BlockRealize, BufferStore, For, Stmt
from .trace import RV
from .visit import substitute, walk


@primitive()
def compute_at(state: ScheduleState, block: RV, loop: RV) -> None:
    """Move a producer under a loop of its consumers, computing only the region they need.

    Fails when a consumer of the block lies outside the loop, when the block reads a
    buffer that is written later than the new position, or when the block does not write
    its iteration space directly. The root location (sample_compute_location's -1) leaves
    the block where it is.

        for i in range(64): B[i] = A[i] + 1
        for i_0 in range(8): for i_1 in range(8): C[i_0*8 + i_1] = B[i_0*8 + i_1] * 2
        compute_at(B, i_0) ->
        for i_0 in range(8):
            for ax0 in range(8): B[i_0*8 + ax0] = A[i_0*8 + ax0] + 1
            for i_1 in range(8): C[i_0*8 + i_1] = B[i_0*8 + i_1] * 2
    """
    if state.is_root_location(loop):
        return
    br, _ = state.block(block)
    blk = br.block
    lp, _lp_anc = state.loop(loop)
    if any(isinstance(n, BlockRealize) and n.block.name == blk.name for n in walk(lp)):
        raise ScheduleError(f"block {blk.name!r} is already under loop {lp.var.name}")
    store = store_of(blk)
    if store is None or not is_identity_write(blk, store.indices):
        raise ScheduleError(
            f"compute_at needs block {blk.name!r} to store to its buffer at "
            "exactly its spatial iter vars"
        )
    out = store.buffer
    if out in state.func.params:
        raise ScheduleError(
            f"block {blk.name!r} writes the function output {out.name}, which must be "
            "produced whole; move its consumer with reverse_compute_at instead"
        )
    state.check_sole_writer(blk, out, "compute_at")
    pos, _ = state.root_nest_of(blk.name, "compute_at")
    target_pos = top_index(state.func, lambda n: isinstance(n, For) and n.var == lp.var)
    if target_pos <= pos:
        raise ScheduleError(
            f"loop {lp.var.name} runs before block {blk.name!r}; compute_at only "
            "moves a producer later"
        )
    under = {n.block.name for n in walk(lp) if isinstance(n, BlockRealize)}
    consumers = [
        b for b, _ in blocks(state.func) if out in reads_of(b.block) and b.block.name != blk.name
    ]
    if not consumers or not any(c.block.name in under for c in consumers):
        raise ScheduleError(f"loop {lp.var.name} holds no consumer of block {blk.name!r}")
    outside = [c.block.name for c in consumers if c.block.name not in under]
    if outside:
        raise ScheduleError(
            f"block {blk.name!r} also feeds {', '.join(outside)} outside loop "
            f"{lp.var.name}; moving it "
            "there would break that dependency"
        )
    check_no_writer_between(state, blk, pos, target_pos, lp)
    # region of `out` the consumers under the loop read, per dim
    windows = consumer_windows(lp, out)
    move_into(state, blk, windows, pos, lp, at_end=False)


@primitive()
def reverse_compute_at(state: ScheduleState, block: RV, loop: RV) -> None:
    """Move a consumer under a loop of its producer, computing the region produced there.

    Needs a spatial block that reads the producer's buffer at exactly its iter vars, and a
    loop that does not iterate the producer's reduction (its values would not be final). A
    dim the block reads at several points (an epilogue pairing two columns) must be produced
    whole under the loop; the block's iter vars that index no dim alone then run in full.

        for i_0 in range(8): for i_1 in range(8): B[i_0*8 + i_1] = A[i_0*8 + i_1] + 1
        for i in range(64): C[i] = B[i] * 2
        reverse_compute_at(C, i_0) ->
        for i_0 in range(8):
            for i_1 in range(8): B[i_0*8 + i_1] = A[i_0*8 + i_1] + 1
            for ax0 in range(8): C[i_0*8 + ax0] = B[i_0*8 + ax0] * 2
    """
    br, _ = state.block(block)
    blk = br.block
    lp, lp_anc = state.loop(loop)
    if any(iv.kind == "reduce" for iv in blk.iter_vars):
        raise ScheduleError(
            f"reverse_compute_at needs a spatial block; {blk.name!r} has a reduction"
        )
    store = store_of(blk)
    if store is None:
        raise ScheduleError(f"block {blk.name!r} is not a single store")
    pos, _ = state.root_nest_of(blk.name, "reverse_compute_at")
    target_pos = top_index(state.func, lambda n: isinstance(n, For) and n.var == lp.var)
    if target_pos >= pos:
        raise ScheduleError(
            f"loop {lp.var.name} does not run before block {blk.name!r}; "
            "reverse_compute_at only "
            "moves a consumer earlier"
        )
    producers_under = [
        n for n in walk(lp) if isinstance(n, BlockRealize) and writes_of(n.block) & reads_of(blk)
    ]
    if not producers_under:
        raise ScheduleError(f"loop {lp.var.name} holds no producer of block {blk.name!r}")
    chain_vars = {a.var for a in lp_anc} | {lp.var}
    for p in producers_under:
        if reduce_loop_vars(p) & chain_vars:
            raise ScheduleError(
                f"loop {lp.var.name} (or one above it) iterates the reduction of block "
                f"{p.block.name!r}; its values are not final inside that loop"
            )
    kids = children(root_body(state.func))
    for k in range(target_pos + 1, pos):
        for n in walk(kids[k]):
            if isinstance(n, Block) and writes_of(n) & reads_of(blk):
                raise ScheduleError(
                    f"block {n.name!r} writes a buffer {blk.name!r} reads after "
                    f"loop {lp.var.name}; "
                    "moving it earlier would read values before they exist"
                )
    buf = next(iter(writes_of(producers_under[0].block) & reads_of(blk)))
    loads = [n for n in walk(blk.body) if isinstance(n, BufferLoad) and n.buffer == buf]
    spatial = {iv.var for iv in blk.iter_vars if iv.kind == "spatial"}
    # per dim of buf, the consumer iter var that indexes it alone, or None: a dim read at
    # several points (a pair) must then be produced whole under the loop
    dim_vars: list[Var | None] = []
    for d in range(len(buf.shape)):
        seen = {ld.indices[d] for ld in loads}
        only = next(iter(seen)) if len(seen) == 1 else None
        dim_vars.append(only if isinstance(only, Var) and only in spatial else None)
    named = [v for v in dim_vars if v is not None]
    if len(set(named)) != len(named) or not is_identity_write(blk, store.indices):
        raise ScheduleError(
            f"reverse_compute_at needs block {blk.name!r} to read {buf.name} at "
            "exactly its iter vars (or whole along the dims it reads at several points)"
        )
    per_dim: list[list[Expr]] = [[] for _ in buf.shape]
    for p in producers_under:
        mapping = {iv.var: v for iv, v in zip(p.block.iter_vars, p.iter_values, strict=True)}
        for st in walk(p.block.body):
            if isinstance(st, BufferStore) and st.buffer == buf:
                for d, ix in enumerate(st.indices):
                    per_dim[d].append(simplify(substitute(ix, mapping)))
    extents = {n.var: simplify(n.extent) for n in walk(lp.body) if isinstance(n, For)}
    buf_windows = exact_windows(per_dim, extents)
    if buf_windows is None:
        raise ScheduleError(
            f"cannot prove that the part of {buf.name} written under loop {lp.var.name} "
            "is a dense box (strided, fused or mixed indices); move the consumer to a "
            "loop whose inner loops index the buffer directly"
        )
    for d, v in enumerate(dim_vars):
        off, ext = buf_windows[d]
        if v is None and not (off == const(0) and simplify(ext - buf.shape[d]) == const(0)):
            raise ScheduleError(
                f"block {blk.name!r} reads dim {d} of {buf.name} at several points, and "
                f"loop {lp.var.name} produces only part of that dim; move it to a loop "
                "under which the dim is produced whole"
            )
    # express windows per dim of the consumer's own store; an iter var that indexes no dim
    # of buf alone (it picks within a pair) runs over its whole domain
    var_window = {v: buf_windows[d] for d, v in enumerate(dim_vars) if v is not None}
    doms = {iv.var: (iv.dom.min, iv.dom.extent) for iv in blk.iter_vars}
    windows = [var_window.get(v, doms[v]) for v in store.indices]
    guards = inherited_guards(producers_under, buf, per_dim, chain_vars)
    move_into(state, blk, windows, pos, lp, at_end=True, extra_guards=guards)


def check_no_writer_between(
    state: ScheduleState, blk: Block, pos: int, target_pos: int, lp: For
) -> None:
    """Refuse moving `blk` past a block that writes something it reads."""
    kids = children(root_body(state.func))
    reads = reads_of(blk)
    for k in range(pos + 1, target_pos + 1):
        for n in walk(kids[k]):
            if isinstance(n, Block) and n.name != blk.name and writes_of(n) & reads:
                shared = ", ".join(sorted(b.name for b in writes_of(n) & reads))
                raise ScheduleError(
                    f"block {blk.name!r} reads {shared}, which block {n.name!r} "
                    "writes before loop "
                    f"{lp.var.name} ends; moving it would read stale values"
                )


def consumer_windows(lp: For, buf: Buffer) -> list[tuple[Expr, Expr]]:
    """Per dim of `buf`, the (offset, extent) the blocks under `lp` read in one iteration."""
    inner = loop_ranges([n for n in walk(lp.body) if isinstance(n, For)])
    unbounded = {
        n.var for n in walk(lp.body) if isinstance(n, For) and not isinstance(n.extent, Const)
    }
    per_dim: list[list[Expr]] = [[] for _ in buf.shape]
    for n in walk(lp.body):
        if not isinstance(n, BlockRealize):
            continue
        mapping = {iv.var: v for iv, v in zip(n.block.iter_vars, n.iter_values, strict=True)}
        for acc in walk(n.block.body):
            if isinstance(acc, BufferLoad) and acc.buffer == buf:
                for d, idx in enumerate(acc.indices):
                    per_dim[d].append(simplify(substitute(idx, mapping)))
    return read_windows(per_dim, buf, inner, unbounded)


def move_into(
    state: ScheduleState,
    blk: Block,
    windows: list[tuple[Expr, Expr]],
    pos: int,
    lp: For,
    at_end: bool,
    extra_guards: list[Expr] | None = None,
) -> None:
    """Take `blk`'s root nest (at `pos`) away and rebuild it over `windows` at the start (or
    `at_end`) of `lp`'s body, guarded where the window may overrun the block's domain."""
    names = state.names()
    store = store_of(blk)
    assert store is not None
    dim_of = {v: d for d, v in enumerate(store.indices)}
    spatial = [iv for iv in blk.iter_vars if iv.kind == "spatial"]
    loops: list[tuple[Var, Expr]] = []
    values: dict[Var, Expr] = {}
    guards: list[Expr] = []
    for v in store.indices:
        d = dim_of[v]
        off, ext = windows[d]
        iv = next(i for i in spatial if i.var == v)
        if isinstance(ext, Const) and ext.value == 1:
            values[v] = off  # type: ignore[index]
        else:
            ax = Var(names.fresh(f"ax{d}"))
            loops.append((ax, ext))
            values[v] = simplify(off + ax)  # type: ignore[index]
        hi = simplify(iv.dom.min + iv.dom.extent)
        rng = loop_ranges([*loop_chain(state, lp), *[For(a, e, EMPTY) for a, e in loops]])
        cond = binop("lt", values[v], hi)  # type: ignore[index]
        if not prove(cond, rng):
            guards.append(cond)
    for iv in blk.iter_vars:
        if iv.kind == "reduce":
            rv_ = Var(names.fresh(f"{iv.var.name}_r"))
            loops.append((rv_, iv.dom.extent))
            values[iv.var] = simplify(iv.dom.min + rv_)
    guards = [*(extra_guards or []), *guards]
    pred: Expr = TRUE
    for g in guards:
        pred = g if pred == TRUE else logical_and(pred, g)
    new_br = BlockRealize(tuple(values[iv.var] for iv in blk.iter_vars), pred, blk)
    nest: Stmt = new_br
    for ax, ext in reversed(loops):
        nest = For(ax, ext, nest)
    kids = children(root_body(state.func))
    del kids[pos]
    body = make_seq(kids)

    def put(s: Stmt) -> Stmt | None:
        if isinstance(s, For) and s.var == lp.var:
            parts = [s.body, nest] if at_end else [nest, s.body]
            return dataclasses.replace(s, body=make_seq(parts))
        return None

    state.func = with_root(state.func, map_stmt(body, put))


def loop_chain(state: ScheduleState, lp: For) -> list[For]:
    """The loops from the root down to `lp`, `lp` last."""
    found = find_loop(state.func, lp.var.name)
    assert found is not None
    return [*found[1], found[0]]


def inherited_guards(
    producers: list[BlockRealize],
    buf: Buffer,
    per_dim: list[list[Expr]],
    chain_vars: set[Var],
) -> list[Expr]:
    """Guards of the producers the moved consumer must share.

    A guard over the target loop and loops above it decides whether anything is produced
    in an iteration, so the consumer takes it too. A guard over inner loops must be the
    bound of a written dimension (`index < extent`), which the consumer's own bound check
    repeats; anything else cannot be expressed for the consumer and is refused.
    """
    out: list[Expr] = []
    for p in producers:
        for cond in conjuncts(p.predicate):
            if loop_vars_in(cond) <= chain_vars:
                if cond not in out:
                    out.append(cond)
                continue
            is_bound = (
                isinstance(cond, BinOp)
                and cond.op == "lt"
                and any(
                    simplify(cond.a) in [simplify(i) for i in idxs]
                    and simplify(cond.b) == simplify(buf.shape[d])
                    for d, idxs in enumerate(per_dim)
                )
            )
            if not is_bound:
                raise ScheduleError(
                    f"block {p.block.name!r} is guarded by {cond}, which a consumer moved "
                    "under this loop could not repeat"
                )
    return out


def read_windows(
    per_dim: list[list[Expr]], buf: Buffer, inner: dict[Var, tuple[int, int]], unbounded: set[Var]
) -> list[tuple[Expr, Expr]]:
    """Per dim, the (offset, extent) covering the given indices as the inner loops run (the
    whole dim when no index reads it or the window cannot be bounded)."""
    out = []
    ranges = dict(inner)
    for v in unbounded:
        ranges[v] = (0, -1)
    for d, idxs in enumerate(per_dim):
        if not idxs:
            out.append((const(0), buf.shape[d]))
            continue
        off, ext = dim_window(idxs, ranges)
        full = simplify(buf.shape[d])
        if off is None or (isinstance(full, Const) and ext >= int(full.value)):
            out.append((const(0), full))
        else:
            out.append((off, const(ext)))
    return out


def exact_windows(
    per_dim: list[list[Expr]], extents: dict[Var, Expr]
) -> list[tuple[Expr, Expr]] | None:
    """Per dim (offset, extent) of exactly the set the indices cover as the inner loops run.

    Only mixed-radix linear indices qualify (coefficients 1, E1, E1*E2, ... of distinct inner
    loops), so the covered set is a dense interval; anything else gives None.
    """
    out: list[tuple[Expr, Expr]] = []
    used: set[Var] = set()
    for idxs in per_dim:
        if not idxs or any(i != idxs[0] for i in idxs):
            return None
        terms, c = linear(idxs[0])
        outer = {t: k for t, k in terms.items() if not (loop_vars_in(t) & set(extents))}
        inner = [
            (k, t) for t, k in terms.items() if t not in outer and extents.get(t) != const(1)
        ]  # a loop of extent 1 only ever contributes 0
        for k, t in inner:
            if not isinstance(t, Var) or t not in extents or k <= 0 or t in used:
                return None
            used.add(t)
        size: Expr = const(1)
        for k, t in sorted(inner, key=lambda kt: (kt[0], kt[1].name)):
            if simplify(size - k) != const(0):
                return None
            size = simplify(size * extents[t])
        out.append((simplify(from_linear(outer, c)), size))
    return out
