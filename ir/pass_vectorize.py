"""Vector legality for CUDA: which innermost loops move memory in 8- or 16-byte accesses.

An innermost `vectorized` or `unrolled` loop of constant extent n whose body is stores (under
guards that do not use the loop variable) gets a `VectorAccess` under the lowered-only
annotation `vector_access`: each load that is contiguous in the loop variable, provably
aligned (every other term of its flat index a multiple of n) and n elements of 8 or 16 bytes
becomes one wide load; a vectorized loop's single store of that shape one wide store, and
one that moves 16 bytes from global to shared memory in a pipeline copy (`async_copy`) a
cp.async. The renderer prints what the annotation says:

    for v in 8 (unrolled): y[i*8 + v] = x[i*8 + v] * w[v]
    ->  for v in 8 (unrolled) [vector_access=VectorAccess(8, loads=(x[...] at i*8, w[...] at 0))]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .annotation_keys import ASYNC_COPY, PIPELINE_STAGES, TENSORIZE, VECTOR_ACCESS
from .dtypes import itemsize
from .expr import Buffer, BufferLoad, Const, Expr, Var
from .gpu_launch import BLOCK_TAGS
from .simplify import linear, simplify
from .stmt import BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt
from .visit import descend, substitute, walk

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


def vector_access(s: For) -> VectorAccess | None:
    """The wide accesses of an innermost vector or unrolled loop, or None to keep it scalar."""
    if not isinstance(s.extent, Const):
        return None
    n = int(s.extent.value)
    found = guarded_stores(s)
    if found is None:
        return None
    guards, stores = found
    if not all(isinstance(st, BufferStore) for st in stores):
        return None
    loads: dict[BufferLoad, Expr] = {}
    written = {st.buffer for st in stores if isinstance(st, BufferStore)}
    for st in stores:
        for x in walk(st.value):  # type: ignore[attr-defined]
            if isinstance(x, BufferLoad) and x not in loads and x.buffer not in written:
                base = vector_base(x.buffer, x.indices, s.var, n)
                if base is not None:
                    loads[x] = base
    store, store_base = None, None
    if len(stores) == 1 and s.kind == "vectorized":
        st = stores[0]
        assert isinstance(st, BufferStore)
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
        and store.buffer.scope == "shared"
        and store.value.buffer.scope == "global"
        and store.value.buffer.dtype == store.buffer.dtype
        and n * itemsize(store.buffer.dtype) == 16
    )
    return VectorAccess(n, tuple(loads.items()), store, store_base, copy)


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
