"""Hoisting passes: wide global loads issued early on CUDA, invariant math calls computed
once on C.

`hoist_loads` (CUDA): an unrolled loop annotated `hoist_loads` over a vector loop issues the
wide global loads of all its iterations first, into register arrays, so they are in flight
together. The pass checks the shape (an unrolled loop of constant extent whose body is one
vector or unrolled loop of constant extent without inner loops or guards) and records the
loads under the lowered-only annotation `hoisted_loads`; a nest of another shape is left as
it is:

    for k0 in 16 (unrolled) [hoist_loads=1]:
      for v in 8 (unrolled): acc += x[k0*8 + v] * w[j, k0*8 + v]
    ->
    for k0 in 16 (unrolled) [hoist_loads=1, hoisted_loads=HoistedLoads(16, 8, x at k0*8, w ...)]

`hoist_invariant_calls` (C): gcc keeps libm calls such as sqrtf inside loops (they may set
errno), so rmsnorm's `x * rsqrt(sumsq / n + eps) * w` took a vector sqrt and divide per 16
elements. Each loop records under `hoisted_calls` the float32 math calls in it that read
nothing the loop changes (and that no enclosing loop already hoists); the C renderer computes
them once before the loop:

    for j: out[i, j] = x[i, j] * rsqrt(sumsq[i] / n + eps) * w[j]
    ->
    for j [hoisted_calls=(rsqrt(sumsq[i] / n + eps),)]: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .annotation_keys import (
    HOIST_LOADS,
    HOISTED_CALLS,
    HOISTED_LOADS,
    WGMMA_BATCH,
)
from .expr import BinOp, BufferLoad, Call, Cast, Const, Expr, Select, Var
from .pass_vectorize import rewrite_block_loops, vector_base
from .stmt import Allocate, BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt
from .visit import descend, walk


@dataclass(frozen=True)
class HoistedLoads:
    """`count` iterations of an outer loop each load `lanes` elements per entry of `loads`
    (a global load of the inner loop and its flat index at inner lane 0)."""

    count: int
    lanes: int
    loads: tuple[tuple[BufferLoad, Expr], ...]


def hoisted_loads(s: For) -> HoistedLoads | None:
    """The loads to issue before `s`, or None when the nest does not have the hoisted shape."""
    inner = s.body
    if not (
        s.kind == "unrolled"
        and isinstance(s.extent, Const)
        and isinstance(inner, For)
        and inner.kind in ("vectorized", "unrolled")
        and isinstance(inner.extent, Const)
        and not any(isinstance(n, For | IfThenElse) for n in walk(inner.body))
    ):
        return None
    n, count = int(inner.extent.value), int(s.extent.value)
    written = {x.buffer for x in walk(inner.body) if isinstance(x, BufferStore)}
    loads: dict[BufferLoad, Expr] = {}
    for x in walk(inner.body):
        if isinstance(x, BufferLoad) and x.buffer.scope == "global" and x not in loads:
            if x.buffer in written:
                continue
            base = vector_base(x.buffer, x.indices, inner.var, n)
            if base is not None:
                loads[x] = base
    return HoistedLoads(count, n, tuple(loads.items())) if loads else None


def hoist_loads(func: PrimFunc) -> PrimFunc:
    """Annotate every `hoist_loads` loop of the hoisted shape with its loads (see module)."""

    def loop(s: For, pipelined: bool, recurse: Callable[[Stmt], Stmt]) -> Stmt:
        out = dataclasses.replace(s, body=recurse(s.body))
        ann = dict(s.annotations)
        if HOIST_LOADS in ann and not pipelined and WGMMA_BATCH not in ann:
            found = hoisted_loads(s)
            if found is not None:
                return dataclasses.replace(
                    out, annotations=(*s.annotations, (HOISTED_LOADS, found))
                )
        return out

    return rewrite_block_loops(func, loop)


# math calls worth computing once: libm calls gcc will not move out of a loop
HOISTED_OPS = frozenset({"exp", "log", "sqrt", "rsqrt", "erf", "tanh", "sigmoid"})


def hoist_invariant_calls(func: PrimFunc) -> PrimFunc:
    """Annotate every loop with the invariant float32 math calls to compute before it."""

    def visit(s: Stmt, done: frozenset[Call]) -> Stmt:
        rebuilt = descend(s, done, visit)
        if rebuilt is not None:
            return rebuilt
        if not isinstance(s, For):
            return s
        calls: tuple[Call, ...] = ()
        if s.kind != "thread_binding":
            calls = tuple(
                c for c in invariant_calls(s, HOISTED_OPS) if c not in done and c.dtype == "float32"
            )
        out = dataclasses.replace(s, body=visit(s.body, done | frozenset(calls)))
        if calls:
            return dataclasses.replace(out, annotations=(*s.annotations, (HOISTED_CALLS, calls)))
        return out

    return dataclasses.replace(func, body=visit(func.body, frozenset()))


def invariant_calls(loop: For, ops: frozenset[str]) -> list[Call]:
    """Outermost calls of `ops` in the loop that read no variable or buffer the loop changes.

    Calls under an `if` or inside a Select branch are left where they are: their loads may be
    out of bounds when the guard is false.
    """
    inner = {loop.var} | {n.var for n in walk(loop.body) if isinstance(n, For)}
    changed = {n.buffer.name for n in walk(loop.body) if isinstance(n, (BufferStore, Allocate))}

    def invariant(e: Expr) -> bool:
        for n in walk(e):
            if isinstance(n, Var) and n in inner:
                return False
            if isinstance(n, BufferLoad) and n.buffer.name in changed:
                return False
        return True

    found: dict[Call, None] = {}

    def visit_expr(e: Expr) -> None:
        if isinstance(e, Call) and e.op in ops and invariant(e):
            found.setdefault(e, None)
        elif isinstance(e, Select):
            visit_expr(e.cond)
        elif isinstance(e, (BinOp, Cast, Call, BufferLoad)):
            for child in _expr_children(e):
                visit_expr(child)

    def visit_stmt(st: Stmt) -> None:
        if isinstance(st, SeqStmt):
            for c in st.stmts:
                visit_stmt(c)
        elif isinstance(st, (For, Allocate)):
            visit_stmt(st.body)
        elif isinstance(st, BufferStore):
            visit_expr(st.value)

    visit_stmt(loop.body)
    return list(found)


def _expr_children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, BinOp):
        return (e.a, e.b)
    if isinstance(e, Cast):
        return (e.value,)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, BufferLoad):
        return e.indices
    return ()
