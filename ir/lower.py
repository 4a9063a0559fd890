"""Lowering: blocks to plain loops, guarded inits and predicates, placed and compacted buffers.

The result is a PrimFunc whose body holds only For, IfThenElse, Allocate, SeqStmt and
BufferStore. Intermediate buffers are allocated at the innermost statement that holds all
their accesses (so a buffer used inside a parallel loop is private to each iteration) and
shrunk to the region touched there when that region has a constant size (a cache tile).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .annotation_keys import STORAGE_ALIGN
from .auto_unroll import apply_auto_unroll
from .errors import LoweringError
from .expr import (
    REDUCE_IDENTITY,
    BinOp,
    Buffer,
    BufferLoad,
    Const,
    Expr,
    Select,
    Var,
    binop,
    const,
    eq,
)
from .intrinsics_wgmma import SWIZZLE_ATTR, swizzled_buffers
from .pipeline import pipeline_loops
from .schedule_tree import iter_nodes, make_seq, reduction_update
from .simplify import bounds, conjunction, conjuncts, from_linear, linear, simplify
from .stmt import (
    TRUE,
    Allocate,
    Block,
    BlockRealize,
    BufferStore,
    For,
    IfThenElse,
    PrimFunc,
    SeqStmt,
    Stmt,
    ThreadAllReduce,
)
from .visit import child_fields, rewrite, substitute, walk


def lower(func: PrimFunc) -> PrimFunc:
    """Lower a (scheduled) PrimFunc to loops; see the module docstring."""
    ranges: dict[Var, tuple[int, int]] = {}
    allocs: list[Buffer] = []
    body = _lower_stmt(_canonical_threads(func.body), ranges, allocs)
    params = set(func.params)
    for buf in allocs:
        if buf in params:
            raise LoweringError(f"parameter {buf.name} cannot also be allocated")
        body = _place(body, buf)
    aligns = storage_aligns(func)
    if aligns:
        body = _apply_storage_align(body, aligns)
    body = pipeline_loops(body)
    body = apply_auto_unroll(body)
    attrs = func.attrs
    swizzled = swizzled_buffers(func)
    if swizzled:  # physical layouts the renderer applies to addresses (intrinsics_wgmma)
        attrs = (*attrs, (SWIZZLE_ATTR, swizzled))
    return dataclasses.replace(func, body=body, attrs=attrs)  # type: ignore[arg-type]


def storage_aligns(func: PrimFunc) -> dict[str, tuple[int, int]]:
    """The storage_align annotations of `func`: buffer name -> (factor, offset)."""
    out: dict[str, tuple[int, int]] = {}
    for n in walk(func.body):
        if isinstance(n, Block):
            for key, value in n.annotations:
                if key == STORAGE_ALIGN:
                    name, factor, offset = str(value).rsplit(":", 2)
                    out[name] = (int(factor), int(offset))
    return out


def _apply_storage_align(s: Stmt, aligns: dict[str, tuple[int, int]]) -> Stmt:
    """Pad the last dim of each aligned allocation so that its row stride is
    offset mod factor (rows then start in different shared-memory banks)."""

    def post(n: Any) -> Any:
        if not (isinstance(n, Allocate) and n.buffer.name in aligns and len(n.buffer.shape) >= 2):
            return None
        factor, offset = aligns[n.buffer.name]
        last = n.buffer.shape[-1]
        if not isinstance(last, Const):
            return None
        width = int(last.value)
        padded = width + (offset - width) % factor
        if padded == width:
            return None
        old = n.buffer
        new = dataclasses.replace(old, shape=(*old.shape[:-1], const(padded)))

        def swap(x: Any) -> Any:
            if isinstance(x, BufferLoad) and x.buffer == old:
                return BufferLoad(new, x.indices)
            if isinstance(x, BufferStore) and x.buffer == old:
                return BufferStore(new, x.indices, x.value)
            return None

        return Allocate(new, rewrite(n.body, swap))

    return rewrite(s, post)


# the names `thread_var` gives: a thread's, block's and cluster rank's own indices
AXIS_VAR_PREFIXES = ("threadIdx_", "blockIdx_", "clusterIdx_")


def thread_var(tag: str) -> Var:
    """The one variable every loop bound to `tag` uses after lowering (threadIdx.y ->
    threadIdx_y), so per-thread buffers used by several nests share their indices."""
    return Var(tag.replace(".", "_"))


def _canonical_threads(s: Stmt) -> Stmt:
    def post(n: Any) -> Any:
        if isinstance(n, For) and n.kind == "thread_binding" and n.thread not in (None, "vthread"):
            v = thread_var(n.thread or "")
            if n.var != v:
                return dataclasses.replace(n, var=v, body=substitute(n.body, {n.var: v}))
        return None

    return rewrite(s, post)


def _lower_stmt(s: Stmt, ranges: dict[Var, tuple[int, int]], allocs: list[Buffer]) -> Stmt:
    if isinstance(s, SeqStmt):
        return make_seq([_lower_stmt(c, ranges, allocs) for c in s.stmts])
    if isinstance(s, For) and _reduces_across(s):
        return _lower_cross_thread(s, ranges, allocs)
    if isinstance(s, For):
        ext = simplify(s.extent)
        if isinstance(ext, Const):
            ranges[s.var] = (0, int(ext.value) - 1)
        body = _lower_stmt(s.body, ranges, allocs)
        return dataclasses.replace(s, extent=ext, body=body)
    if isinstance(s, BlockRealize):
        return _lower_realize(s, ranges, allocs)
    if isinstance(s, IfThenElse | Allocate | BufferStore):
        return s
    raise LoweringError(f"cannot lower {type(s).__name__}")


def _lower_realize(
    br: BlockRealize, ranges: dict[Var, tuple[int, int]], allocs: list[Buffer]
) -> Stmt:
    blk: Block = br.block
    allocs.extend(blk.alloc_buffers)
    mapping: dict[Var, Expr] = {}
    for iv, value in zip(blk.iter_vars, br.iter_values, strict=True):
        mapping[iv.var] = simplify(value, ranges)
    body = _lower_stmt(substitute(blk.body, mapping), ranges, allocs)
    if blk.init is not None:
        first = [eq(mapping[iv.var], iv.dom.min) for iv in blk.iter_vars if iv.kind == "reduce"]
        cond = simplify(conjunction(first), ranges)
        init = substitute(blk.init, mapping)
        if isinstance(cond, Const):
            body = make_seq([init, body]) if cond.value else body
        else:
            body = make_seq([IfThenElse(cond, init), body])
    body = _simplify_stmt(body, ranges)
    pred = simplify(substitute(br.predicate, mapping), ranges)
    if isinstance(pred, Const):
        if not pred.value:
            return SeqStmt(())
        return body
    return IfThenElse(pred, body)


def _simplify_stmt(s: Stmt, ranges: dict[Var, tuple[int, int]]) -> Stmt:
    return rewrite(
        s,
        lambda n: (
            BufferStore(
                n.buffer, tuple(simplify(i, ranges) for i in n.indices), simplify(n.value, ranges)
            )
            if isinstance(n, BufferStore)
            else None
        ),
    )


# ---------------------------------------------------------------- cross-thread reductions



def _block_reduction(blk: Block) -> tuple[BufferStore, str, Expr] | None:
    """(store, op, operand) when `blk` is `C[idx] = C[idx] op operand` with an init."""
    store = blk.body
    if blk.init is None or not isinstance(store, BufferStore):
        return None
    found = reduction_update(store)
    return None if found is None else (store, *found)


def cross_thread_reduction(loop: For, br: BlockRealize) -> bool:
    """Whether `loop`, iterating the reduction of `br`, is a threadIdx axis whose threads
    combine their partial results (lowered to a ThreadAllReduce) instead of racing."""
    thread = loop.thread or ""
    return (
        loop.kind == "thread_binding"
        and thread.startswith("threadIdx")
        and _block_reduction(br.block) is not None
    )


def _reduced_by(br: BlockRealize, v: Var) -> bool:
    """Whether loop variable `v` drives a reduce iter var of the block."""
    return any(
        iv.kind == "reduce" and any(x == v for x in walk(val))
        for iv, val in zip(br.block.iter_vars, br.iter_values, strict=True)
    )


def _reduces_across(loop: For) -> bool:
    if loop.kind != "thread_binding" or not (loop.thread or "").startswith("threadIdx"):
        return False
    return any(isinstance(n, BlockRealize) and _reduced_by(n, loop.var) for n in walk(loop.body))


def _lower_cross_thread(s: For, ranges: dict[Var, tuple[int, int]], allocs: list[Buffer]) -> Stmt:
    """Each thread of `s` reduces its share into a local accumulator; the threads then
    combine them (ThreadAllReduce) and thread 0 stores the result (every thread, into a
    result in local scope)."""
    realizes = [n for n in walk(s.body) if isinstance(n, BlockRealize) and _reduced_by(n, s.var)]
    where = f"the reduction over {s.thread} (loop {s.var.name})"
    if len(realizes) != 1:  # other blocks (e.g. per-thread copies of operands) lower as usual
        raise LoweringError(
            f"{where} must hold exactly one block reducing over it, found {len(realizes)}"
        )
    br = realizes[0]
    blk = br.block
    upd = _block_reduction(blk)
    if upd is None:
        raise LoweringError(f"{where}: block {blk.name!r} is not C = C (+|max|min) expr")
    store, op, operand = upd
    ext = simplify(s.extent)
    if not isinstance(ext, Const):
        raise LoweringError(f"{where} needs a constant number of threads, got {ext}")
    inner = {s.var} | {n.var for n in walk(s.body) if isinstance(n, For)}

    # spatial loops inside the thread axis (a few rows reduced at once): their threads
    # keep a partial result per row, all reduced together
    rows = _rows_inside(s, br, where)
    row_vars = {lp.var for lp in rows}
    assert isinstance(blk.init, BufferStore)
    init = blk.init.value
    ident = REDUCE_IDENTITY[op]
    if not (isinstance(init, Const) and float(init.value) == ident):
        raise LoweringError(
            f"{where}: block {blk.name!r} starts from {init}, not the identity of {op}"
        )
    size, slot = 1, const(0)
    for lp in reversed(rows):  # the rows' slot in the accumulator, the last loop fastest
        slot = simplify(binop("add", slot, binop("mul", lp.var, const(size))))
        size *= int(simplify(lp.extent).value)
    acc = Buffer(f"{blk.name}_red", (const(size),), store.buffer.dtype, "local")
    zero = (slot,)
    acc0 = BufferLoad(acc, zero)
    new_blk = dataclasses.replace(
        blk, body=BufferStore(acc, zero, binop(op, acc0, operand)), init=None
    )
    new_body = rewrite(
        s.body,
        lambda n: (
            dataclasses.replace(n, block=new_blk)
            if isinstance(n, BlockRealize) and n.block.name == blk.name
            else None
        ),
    )
    n_threads = int(ext.value)
    ranges[s.var] = (0, n_threads - 1)
    partial = _lower_stmt(new_body, ranges, allocs)
    mapping = {
        iv.var: simplify(val, ranges) for iv, val in zip(blk.iter_vars, br.iter_values, strict=True)
    }
    idx = tuple(simplify(substitute(i, mapping), ranges) for i in store.indices)
    reduce_inner = inner - row_vars
    at_zero = {v: const(0) for v in reduce_inner}
    first = [
        eq(substitute(mapping[iv.var], at_zero), iv.dom.min)
        for iv in blk.iter_vars
        if iv.kind == "reduce"
    ]
    cond_first = simplify(conjunction(first), ranges)
    out = store.buffer
    set_out = BufferStore(out, idx, acc0)
    fold_out = BufferStore(out, idx, binop(op, BufferLoad(out, idx), acc0))
    final: Stmt
    if isinstance(cond_first, Const):
        final = set_out if cond_first.value else fold_out
    else:
        final = IfThenElse(cond_first, set_out, fold_out)
    outer_guards = [
        c
        for c in conjuncts(simplify(substitute(br.predicate, mapping), ranges))
        if c != TRUE and not any(isinstance(x, Var) and x in reduce_inner for x in walk(c))
    ]
    # the all-reduce leaves the total on every thread: each stores it to its own (local)
    # copy, so later code of any thread reads it without a barrier; else thread 0 stores it
    firsts = [] if out.scope == "local" else [eq(s.var, 0)]
    guard = simplify(conjunction([*firsts, *outer_guards]), ranges)
    store_out = final if guard == TRUE else IfThenElse(guard, final)
    fill: Stmt = BufferStore(acc, zero, const(ident, acc.dtype))
    for lp in reversed(rows):  # the rows' loops again, around the fill and the stores
        ext_lp = simplify(lp.extent)
        fill = For(lp.var, ext_lp, fill, "unrolled")
        store_out = For(lp.var, ext_lp, store_out, "unrolled")
    body = make_seq([fill, partial, ThreadAllReduce(acc, op, s.thread or "", n_threads), store_out])
    return dataclasses.replace(s, extent=ext, body=Allocate(acc, body))


def _rows_inside(s: For, br: BlockRealize, where: str) -> list[For]:
    """The loops between the thread axis `s` and the reduction `br` that drive its spatial
    iter vars (outermost first): each must be a serial or unrolled loop of constant extent
    that drives nothing else."""
    blk = br.block
    path = next((loops for n, loops in iter_nodes(s.body) if n is br), None)
    if path is None:
        raise LoweringError(f"{where}: block {blk.name!r} is not in a loop nest under it")
    rows: list[For] = []
    for lp in path:
        drives = {
            iv.kind
            for iv, val in zip(blk.iter_vars, br.iter_values, strict=True)
            if any(x == lp.var for x in walk(val))
        }
        if "spatial" not in drives:
            continue
        if "reduce" in drives or lp.kind not in ("serial", "unrolled"):
            raise LoweringError(
                f"{where}: loop {lp.var.name} inside it drives a spatial iter var of "
                f"{blk.name!r} and must be a plain loop over it alone"
            )
        if not isinstance(simplify(lp.extent), Const):
            raise LoweringError(
                f"{where}: loop {lp.var.name} inside it drives a spatial iter var of "
                f"{blk.name!r} and needs a constant extent, got {lp.extent}"
            )
        rows.append(lp)
    return rows


# ---------------------------------------------------------------- allocation placement


def _accessed(s: Any, buf: Buffer) -> bool:
    for n in walk(s):
        if isinstance(n, BufferLoad | BufferStore) and n.buffer == buf:
            return True
    return False


def _place(s: Stmt, buf: Buffer) -> Stmt:
    """Wrap the innermost statement holding every access of `buf` in an Allocate."""
    if isinstance(s, SeqStmt):
        users = [i for i, c in enumerate(s.stmts) if _accessed(c, buf)]
        if len(users) == 1:
            i = users[0]
            stmts = list(s.stmts)
            stmts[i] = _place(stmts[i], buf)
            return SeqStmt(tuple(stmts))
        if users and (users[0] > 0 or users[-1] < len(s.stmts) - 1):
            # live only from its first to its last user: shared memory can be reused around it
            lo, hi = users[0], users[-1] + 1
            inner = _compact(SeqStmt(s.stmts[lo:hi]), buf)
            return SeqStmt((*s.stmts[:lo], inner, *s.stmts[hi:]))
        return _compact(s, buf)
    if isinstance(s, For) and _may_enter(s, buf.scope):
        return dataclasses.replace(s, body=_place(s.body, buf))
    if isinstance(s, Allocate):
        return dataclasses.replace(s, body=_place(s.body, buf))
    return _compact(s, buf)


def _may_enter(loop: For, scope: str) -> bool:
    """Whether an allocation of `scope` may move inside `loop`.

    Thread-bound loops are GPU threads: shared memory lives per thread block (inside
    blockIdx loops, outside threadIdx loops), local memory and fragments per thread, and
    global intermediates outside all of them; a `shared.cluster` buffer stays outside the
    clusterIdx loop whose blocks write it.
    """
    if loop.kind != "thread_binding":
        return True
    if scope in ("shared", "shared.cluster"):  # the cluster's blocks index it by their rank
        return (loop.thread or "").startswith("blockIdx")
    return scope != "global"


def _inner_ranges(s: Stmt) -> dict[Var, tuple[int, int]] | None:
    out: dict[Var, tuple[int, int]] = {}
    for n in walk(s):
        if isinstance(n, For):
            if not isinstance(n.extent, Const):
                out[n.var] = (0, -1)  # marks an unbounded inner loop
            else:
                out[n.var] = (0, int(n.extent.value) - 1)
    return out


def _compact(s: Stmt, buf: Buffer) -> Stmt:
    inner = _inner_ranges(s) or {}
    if buf.scope not in ("global", "shared", "shared.cluster"):
        # per-thread storage: a thread index is fixed for the thread, so it is an offset
        inner = {v: r for v, r in inner.items() if not v.name.startswith(AXIS_VAR_PREFIXES)}
    elif buf.scope == "shared":  # a block's own memory: its rank in the cluster is fixed
        inner = {v: r for v, r in inner.items() if not v.name.startswith("clusterIdx_")}
    index_lists = [
        n.indices for n in walk(s) if isinstance(n, BufferLoad | BufferStore) and n.buffer == buf
    ]
    offsets: list[Expr] = []
    shape: list[Expr] = []
    guarded = _guarded_accesses(s, buf) if buf.scope == "shared" else []
    for d, full in enumerate(buf.shape):
        off, ext = dim_window([idx[d] for idx in index_lists], inner)
        window = None if off is not None else _guarded_window(guarded, d, inner)
        if window is not None:  # a share of a symbolic length: sized by its guards
            offsets.append(window[0])
            shape.append(window[1])
        elif off is None or (isinstance(full, Const) and ext >= int(full.value)):
            offsets.append(const(0))
            shape.append(full)
        else:
            offsets.append(off)
            shape.append(const(ext))
    if all(isinstance(o, Const) and o.value == 0 for o in offsets) and tuple(shape) == buf.shape:
        return Allocate(buf, s)
    new_buf = dataclasses.replace(buf, shape=tuple(shape))

    def shift(idx: tuple[Expr, ...]) -> tuple[Expr, ...]:
        return tuple(simplify(i - o) for i, o in zip(idx, offsets, strict=True))

    def post(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer == buf:
            return BufferLoad(new_buf, shift(n.indices))
        if isinstance(n, BufferStore) and n.buffer == buf:
            return BufferStore(new_buf, shift(n.indices), n.value)
        return None

    return Allocate(new_buf, rewrite(s, post))


def _guarded_accesses(s: Stmt, buf: Buffer) -> list[tuple[tuple[Expr, ...], list[Expr]]]:
    """Every access of `buf` in `s` with the conditions it runs under (the enclosing guards'
    and, for a load, the Selects' on its way)."""
    out: list[tuple[tuple[Expr, ...], list[Expr]]] = []

    def visit(n: Any, conds: list[Expr]) -> None:
        if n is None:
            return
        if isinstance(n, IfThenElse | Select):  # the taken branch runs under the condition
            taken, other = (
                (n.then_case, n.else_case) if isinstance(n, IfThenElse)
                else (n.true_value, n.false_value)
            )  # fmt: skip
            visit(n.cond, conds)
            visit(taken, [*conds, *conjuncts(n.cond)])
            visit(other, conds)
            return
        if isinstance(n, BufferLoad | BufferStore) and n.buffer == buf:
            out.append((n.indices, conds))
        for child in _children(n):
            visit(child, conds)

    visit(s, [])
    return out


def _children(n: Any) -> list[Any]:
    """The nodes directly under `n` (not buffers)."""
    out = []
    for f in child_fields(type(n)):
        value = getattr(n, f)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, Expr | Stmt):
                out.append(v)
    return out


def _guarded_window(
    accesses: list[tuple[tuple[Expr, ...], list[Expr]]], dim: int, inner: dict[Var, tuple[int, int]]
) -> tuple[Expr, Expr] | None:
    """(offset, extent) of dimension `dim` where every access's index there is outer + i, with
    outer the same for all and free of the scope's inner variables, i >= 0 (non-negative
    coefficients and constant), and a guard `i < E` on the access's way, E the same for all
    and free of inner variables: a cluster block's share of a symbolic-length row."""
    outer_all, extent_all = None, None
    for indices, conds in accesses:
        terms, c = linear(indices[dim])
        outer = {t: k for t, k in terms.items() if not _uses_any(t, inner)}
        mine = {t: k for t, k in terms.items() if t not in outer}
        if c < 0 or any(k < 0 for k in mine.values()) or (outer_all not in (None, outer)):
            return None
        extent = next(
            (
                cond.b
                for cond in conds
                if isinstance(cond, BinOp)
                and cond.op == "lt"
                and linear(cond.a) == (mine, c)
                and not _uses_any(cond.b, inner)
            ),
            None,
        )
        if extent is None or (extent_all is not None and extent != extent_all):
            return None
        outer_all, extent_all = outer, extent
    if outer_all is None or extent_all is None:
        return None
    return simplify(from_linear(outer_all, 0)), extent_all


def dim_window(indices: list[Expr], inner: dict[Var, tuple[int, int]]) -> tuple[Expr | None, int]:
    """(offset expression, constant extent) covering all `indices` within the scope, or None."""
    outer_part: dict[Expr, int] | None = None
    lo_all, hi_all = None, None
    for idx in indices:
        terms, c = linear(idx)
        outer = {t: k for t, k in terms.items() if not _uses_any(t, inner)}
        inner_terms = {t: k for t, k in terms.items() if t not in outer}
        if outer_part is None:
            outer_part = outer
        elif outer != outer_part:
            return None, 0
        if any(inner[v][1] < 0 for v in inner if _uses_any_one(inner_terms, v)):
            return None, 0
        lo, hi = bounds(from_linear(inner_terms, c), inner)
        if lo is None or hi is None:
            return None, 0
        lo_all = lo if lo_all is None else min(lo_all, lo)
        hi_all = hi if hi_all is None else max(hi_all, hi)
    if outer_part is None or lo_all is None or hi_all is None:
        return None, 0
    return simplify(from_linear(outer_part, lo_all)), hi_all - lo_all + 1


def _uses_any(e: Expr, inner: dict[Var, tuple[int, int]]) -> bool:
    return any(isinstance(n, Var) and n in inner for n in walk(e))


def _uses_any_one(terms: dict[Expr, int], v: Var) -> bool:
    return any(any(n == v for n in walk(t)) for t in terms)
