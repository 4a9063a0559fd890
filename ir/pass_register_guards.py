"""Unguarded register updates for CUDA: the bounds a block's predicate puts on the slot a
thread computes leave statements that only read and write registers.

A tile whose rows run past a symbolic extent (`row < n` for a query tile's ragged end,
`key < m` for a key tile's) guards each of its register updates. Inside the unrolled loops
of a key tile every row's 8 products sat under such a branch, and the guards, not the
products, made most of the kernel's instructions. Where a guarded statement reads registers
only and writes a register slot, a guard term that bounds the slot itself (its variables
all index the slot) can go: the slot of an iteration outside the tile is its own, outside
every slot an iteration inside reads (compaction shifts slots, it never merges them), and
whatever lands there is never read, because every reader of the slot runs under the same
bound. A term over the loop the update reduces along (`key < m` in a sum over keys) stays:
leaving it out would add to a slot that is read; so does a term over the thread index where
threads combine the array (a block's max over its threads' slots). Nothing goes unless the
loops' ranges prove every register access of the statements inside its array.

    if (row < n && key < m) { if (k == 0) s[r] = 0; s[r] = s[r] + q_l[r, k] * k_l[k]; }
    ->  { if (k == 0) s[r] = 0; s[r] = s[r] + q_l[r, k] * k_l[k]; }
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .expr import Buffer, BufferLoad, Expr, Var
from .pass_clamp_copies import loop_ranges
from .simplify import Ranges, conjunction, conjuncts, prove
from .stmt import (
    Allocate,
    BufferStore,
    For,
    IfThenElse,
    PrimFunc,
    SeqStmt,
    Stmt,
    ThreadAllReduce,
)
from .visit import rewrite, walk

_THREAD = ("threadIdx_", "blockIdx_", "clusterIdx_")  # a thread's own indices, fixed for it


def unguard_register_updates(func: PrimFunc) -> PrimFunc:
    """Every guard over register-only statements without the terms that bound the slots
    they write (see module)."""
    shape_vars = set(func.shape_vars)
    ranges = loop_ranges(func)
    fixed = _fixed_vars(func.body)

    def post(n: Any) -> Any:
        if not isinstance(n, IfThenElse) or n.else_case is not None:
            return None
        stores = _register_stores(n.then_case)
        if not stores or not _inside_arrays(n.then_case, ranges):
            return None
        slot_vars = [_vars(tuple(st.indices)) | fixed.get(st.buffer, set()) for st in stores]
        terms = conjuncts(n.cond)
        kept = [t for t in terms if not all(_vars(t) - shape_vars <= s for s in slot_vars)]
        if len(kept) == len(terms):
            return None
        return dataclasses.replace(n, cond=conjunction(kept)) if kept else n.then_case

    body = rewrite(func.body, post)
    return func if body is func.body else dataclasses.replace(func, body=body)


def _register_stores(s: Stmt) -> list[BufferStore] | None:
    """The stores of `s` when it is stores into registers (under guards of their own) that
    load nothing but registers; None otherwise."""
    if isinstance(s, BufferStore):
        loads = [x for x in walk((s.value, s.indices)) if isinstance(x, BufferLoad)]
        local = s.buffer.scope == "local" and all(x.buffer.scope == "local" for x in loads)
        return [s] if local else None
    if isinstance(s, IfThenElse) and s.else_case is None:
        if any(isinstance(x, BufferLoad) and x.buffer.scope != "local" for x in walk(s.cond)):
            return None
        return _register_stores(s.then_case)
    if isinstance(s, SeqStmt):
        out: list[BufferStore] = []
        for c in s.stmts:
            found = _register_stores(c)
            if found is None:
                return None
            out += found
        return out
    return None


def _fixed_vars(body: Stmt) -> dict[Buffer, set[Var]]:
    """For each register array, the variables its slots do not range over: the loops its
    allocation sits in (each of their iterations has an array of its own), the block
    indices, and the thread indices unless threads combine the array (`ThreadAllReduce`:
    there a thread outside the tile must hold the identity it was given)."""
    out: dict[Buffer, set[Var]] = {}
    combined = {n.buffer for n in walk(body) if isinstance(n, ThreadAllReduce)}
    threads = {x for x in walk(body) if isinstance(x, Var) and x.name.startswith(_THREAD)}
    lanes = {x for x in threads if x.name.startswith("threadIdx_")}

    def visit(s: Any, outer: frozenset[Var]) -> None:
        if isinstance(s, Allocate) and s.buffer.scope == "local":
            own = threads - lanes if s.buffer in combined else threads
            out[s.buffer] = set(outer - lanes) | own
        if isinstance(s, For):
            outer = outer | {s.var}
        elif not isinstance(s, Stmt):
            return
        for x in _children(s):
            visit(x, outer)

    visit(body, frozenset())
    return out


def _children(s: Stmt) -> list[Any]:
    if isinstance(s, SeqStmt):
        return list(s.stmts)
    if isinstance(s, IfThenElse):
        return [s.then_case, s.else_case]
    return [getattr(s, "body", None)]


def _inside_arrays(s: Stmt, ranges: Ranges) -> bool:
    """Whether every register load and store of `s` indexes inside its array for every
    value the loops' ranges allow."""
    for x in walk(s):
        if isinstance(x, BufferLoad | BufferStore) and x.buffer.scope == "local":
            for i, dim in zip(x.indices, x.buffer.shape, strict=True):
                if not (prove(i >= 0, ranges) and prove(i < dim, ranges)):
                    return False
    return True


def _vars(e: Expr | tuple[Expr, ...]) -> set[Var]:
    return {x for x in walk(e) if isinstance(x, Var)}


__all__ = ["unguard_register_updates"]
