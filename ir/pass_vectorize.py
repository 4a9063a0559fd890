"""Vector legality for CUDA: which innermost loops move memory in 8- or 16-byte accesses.

An innermost `vectorized` or `unrolled` loop of constant extent n whose body is stores (under
guards that do not use the loop variable, each store possibly under its own such guard: a
reduction's init) gets a `VectorAccess` under the lowered-only annotation `vector_access`:
each load that is contiguous in the loop variable, provably aligned (every other term of its
flat index a multiple of n) and n elements of 8 or 16 bytes becomes one wide load; a
vectorized loop's single store of that shape one wide store, and one that moves 16 bytes
from global to shared memory in a pipeline copy (`async_copy`) a cp.async. The renderer
prints what the annotation says:

    for v in 8 (unrolled): y[i*8 + v] = x[i*8 + v] * w[v]
    ->  for v in 8 (unrolled) [vector_access=VectorAccess(8, loads=(x[...] at i*8, w[...] at 0))]

A load that only runs where a condition holds (a branch of a Select, a store under its own
guard) is widened only when the condition does not use the loop variable, and the wide load
then runs under that condition (`guarded`), so a masked-off key or padded row is never read:

    for v in 4: acc[v] += (j < m) ? p[j] * vc[j*128 + v] : 0
    ->  uint2 w = (j < m) ? *(uint2*)(vc + j*128) : uint2{};  for v in 4: acc[v] += ... w[v] ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .annotation_keys import ASYNC_COPY, PIPELINE_STAGES, TENSORIZE, VECTOR_ACCESS
from .dtypes import itemsize
from .expr import Buffer, BufferLoad, Call, Const, Expr, Select, Var, logical_and, logical_or
from .gpu_launch import BLOCK_TAGS
from .simplify import linear, simplify
from .stmt import BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt
from .visit import child_fields, descend, substitute, walk

VECTOR_BYTES = (8, 16)  # the widths of one access (uint2, uint4)


@dataclass(frozen=True)
class VectorAccess:
    """How a vector loop of `lanes` iterations accesses memory: wide `loads` (each with its
    flat index at lane 0), an optional wide `store` (with its base) and whether that store is
    a cp.async global -> shared copy; `store_threads` are the thread axes whose thread 0
    alone makes the store (set by pass_predicate)."""

    lanes: int
    loads: tuple[tuple[BufferLoad, Expr], ...]
    store: BufferStore | None = None
    store_base: Expr | None = None
    async_copy: bool = False
    store_threads: tuple[str, ...] = ()
    guarded: tuple[tuple[BufferLoad, Expr], ...] = ()  # loads that run only where Expr holds


def vector_base(buf: Buffer, indices: tuple[Expr, ...], v: Var, n: int) -> Expr | None:
    """The flat index at v = 0 when `buf[indices]` is contiguous in `v` and the n-element
    run starts at a multiple of n (so the wide access is aligned); None otherwise."""
    if buf.scope not in ("global", "shared"):
        return None
    if itemsize(buf.dtype) * n not in VECTOR_BYTES:
        return None
    flat: Expr | None = None
    for idx, dim in zip(indices, buf.shape, strict=True):
        flat = idx if flat is None else flat * dim + idx
    if flat is None:
        return None
    terms, c = linear(simplify(flat))
    if terms.get(v) != 1 or c % n:
        return None
    for t, k in terms.items():
        if t == v:
            continue
        if any(x == v for x in walk(t)) or k % n:
            return None
    return simplify(substitute(flat, {v: Const(0, "int64")}))


def guarded_stores(s: For) -> tuple[list[Expr], list[Stmt]] | None:
    """The guards around a loop body and the statements under them; None when a guard uses
    the loop variable."""
    body, guards = s.body, []
    while isinstance(body, IfThenElse) and body.else_case is None:
        if any(x == s.var for x in walk(body.cond)):
            return None
        guards.append(body.cond)
        body = body.then_case
    return guards, list(body.stmts) if isinstance(body, SeqStmt) else [body]


def _store_and_guard(st: Stmt, v: Var) -> tuple[BufferStore, Expr | None] | None:
    """A statement of a vector body as (store, the guard it alone runs under): a store, or
    a store under a guard without `v` (a reduction's init); None for anything else."""
    if isinstance(st, BufferStore):
        return st, None
    if (
        isinstance(st, IfThenElse)
        and st.else_case is None
        and isinstance(st.then_case, BufferStore)
        and not any(x == v for x in walk(st.cond))
    ):
        return st.then_case, st.cond
    return None


def _loads_under(e: Expr, cond: Expr | None, out: list[tuple[BufferLoad, Expr | None]]) -> None:
    """Every load of `e` with the condition under which generated code evaluates it (the
    Selects on its way: only the chosen side of a Select runs)."""
    if isinstance(e, Select):
        _loads_under(e.cond, cond, out)
        for side, c in ((e.true_value, e.cond), (e.false_value, Call("not", (e.cond,), "bool"))):
            _loads_under(side, c if cond is None else logical_and(cond, c), out)
        return
    if isinstance(e, BufferLoad):
        out.append((e, cond))
    for f in child_fields(type(e)):
        value = getattr(e, f)
        for child in value if isinstance(value, tuple) else (value,):
            if isinstance(child, Expr):
                _loads_under(child, cond, out)


def vector_access(s: For) -> VectorAccess | None:
    """The wide accesses of an innermost vector or unrolled loop, or None to keep it scalar."""
    if not isinstance(s.extent, Const):
        return None
    n = int(s.extent.value)
    found = guarded_stores(s)
    if found is None:
        return None
    guards, stmts = found
    parts = [_store_and_guard(st, s.var) for st in stmts]
    if any(p is None for p in parts):
        return None
    stores = [p[0] for p in parts if p is not None]
    loads: dict[BufferLoad, Expr] = {}
    conds: dict[BufferLoad, Expr | None] = {}
    unsafe: set[BufferLoad] = set()
    written = {st.buffer for st in stores}
    for part in parts:
        assert part is not None
        st, own = part
        found_loads: list[tuple[BufferLoad, Expr | None]] = []
        _loads_under(st.value, own, found_loads)
        for x, cond in found_loads:
            if x.buffer in written or x in unsafe:
                continue
            if cond is not None and any(y == s.var for y in walk(cond)):
                unsafe.add(x)  # runs under a per-lane condition: stays a scalar load
                loads.pop(x, None)
                continue
            if x in conds:  # met again: the wide load runs where either use needs it
                prev = conds[x]
                if prev is not None and cond is not None and prev != cond:
                    conds[x] = logical_or(prev, cond)
                elif cond is None:
                    conds[x] = None
                continue
            base = vector_base(x.buffer, x.indices, s.var, n)
            if base is not None:
                loads[x] = base
                conds[x] = cond
    store, store_base = None, None
    if len(stmts) == 1 and isinstance(stmts[0], BufferStore) and s.kind == "vectorized":
        st = stmts[0]
        store_base = vector_base(st.buffer, st.indices, s.var, n)
        store = st if store_base is not None else None
    if not loads and store is None:
        return None
    copy = (
        store is not None
        and ASYNC_COPY in dict(s.annotations)
        and not guards
        and isinstance(store.value, BufferLoad)
        and store.value in loads
        and conds.get(store.value) is None
        and store.buffer.scope == "shared"
        and store.value.buffer.scope == "global"
        and store.value.buffer.dtype == store.buffer.dtype
        and n * itemsize(store.buffer.dtype) == 16
    )
    guarded = tuple((x, c) for x, c in conds.items() if x in loads and c is not None)
    return VectorAccess(n, tuple(loads.items()), store, store_base, copy, guarded=guarded)


LoopRewrite = Callable[[For, bool, Callable[[Stmt], Stmt]], Stmt]


def rewrite_block_loops(func: PrimFunc, rewrite_loop: LoopRewrite) -> PrimFunc:
    """Walk `func` the way the CUDA passes see it: tensorized loops are left alone and
    thread-bound loops passed through; every other loop goes to `rewrite_loop(loop, pipelined,
    recurse)`, where `pipelined` says it carries software-pipeline stages outside every
    threadIdx loop (the pipelining pass expands it) and `recurse(body)` continues the walk."""

    def visit(s: Stmt, in_threads: bool) -> Stmt:
        rebuilt = descend(s, in_threads, visit)
        if rebuilt is not None:
            return rebuilt
        if not isinstance(s, For):
            return s
        ann = dict(s.annotations)
        if TENSORIZE in ann:
            return s
        if s.kind == "thread_binding" and s.thread != "vthread":
            inner = in_threads or s.thread in BLOCK_TAGS
            return dataclasses.replace(s, body=visit(s.body, inner))
        pipelined = PIPELINE_STAGES in ann and not in_threads
        return rewrite_loop(s, pipelined, lambda body: visit(body, in_threads))

    return dataclasses.replace(func, body=visit(func.body, False))


def mark_vector_loops(func: PrimFunc) -> PrimFunc:
    """Annotate every innermost vector or unrolled loop the CUDA renderer widens (see module)."""

    def loop(s: For, pipelined: bool, recurse: Callable[[Stmt], Stmt]) -> Stmt:
        innermost = not any(isinstance(n, For) for n in walk(s.body))
        if s.kind in ("vectorized", "unrolled") and innermost and not pipelined:
            access = vector_access(s)
            if access is not None:
                return dataclasses.replace(s, annotations=(*s.annotations, (VECTOR_ACCESS, access)))
            return s
        return dataclasses.replace(s, body=recurse(s.body))

    return rewrite_block_loops(func, loop)
