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
from collections.abc import Mapping
from typing import Any

from .expr import Buffer, BufferLoad, Expr, Var
from .lower import AXIS_VAR_PREFIXES
from .pass_clamp_copies import loop_ranges
from .simplify import Ranges, conjunction, conjuncts, in_bounds
from .stmt import Allocate, BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt, ThreadAllReduce
from .visit import descend, free_vars, walk

# (the loops a statement sits in, each register array in scope with the variables fixed for
# its slots)
_Scope = tuple[frozenset[Var], Mapping[Buffer, frozenset[Var]]]


def unguard_register_updates(func: PrimFunc) -> PrimFunc:
    """Every guard over register-only statements without the terms that bound the slots
    they write (see module). The variables fixed for an array's slots: the loops its
    allocation sits in (each of their iterations has an array of its own), the block and
    cluster indices, and the thread indices unless threads combine the array
    (`ThreadAllReduce`: there a thread outside the tile must hold the identity it was
    given)."""
    shape_vars = set(func.shape_vars)
    ranges = loop_ranges(func)
    combined = {n.buffer for n in walk(func.body) if isinstance(n, ThreadAllReduce)}
    axes = {x for x in free_vars(func.body) if x.name.startswith(AXIS_VAR_PREFIXES)}
    lanes = {x for x in axes if x.name.startswith(AXIS_VAR_PREFIXES[0])}

    def visit(s: Any, scope: _Scope) -> Any:
        loops, fixed = scope
        if isinstance(s, For):
            return dataclasses.replace(s, body=visit(s.body, (loops | {s.var}, fixed)))
        if isinstance(s, Allocate) and s.buffer.scope == "local":
            own = axes - lanes if s.buffer in combined else axes
            scope = (loops, {**fixed, s.buffer: (loops - lanes) | own})
        if isinstance(s, IfThenElse):
            narrowed = _narrowed(s, fixed, shape_vars, ranges)
            if narrowed is not s:
                return visit(narrowed, scope)
        rebuilt = descend(s, scope, visit)
        return s if rebuilt is None else rebuilt

    return dataclasses.replace(func, body=visit(func.body, (frozenset(), {})))


def _narrowed(
    s: IfThenElse, fixed: Mapping[Buffer, frozenset[Var]], shape_vars: set[Var], ranges: Ranges
) -> Stmt:
    """`s` without the guard terms that only bound the register slots it writes (its body
    alone where none is left); `s` itself where none goes."""
    if s.else_case is not None:
        return s
    stores = _register_stores(s.then_case)
    if not stores or not _inside_arrays(s.then_case, ranges):
        return s
    slot_vars = [_vars(tuple(st.indices)) | fixed.get(st.buffer, frozenset()) for st in stores]
    terms = conjuncts(s.cond)
    kept = [t for t in terms if not all(_vars(t) - shape_vars <= v for v in slot_vars)]
    if len(kept) == len(terms):
        return s
    return dataclasses.replace(s, cond=conjunction(kept)) if kept else s.then_case


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


def _inside_arrays(s: Stmt, ranges: Ranges) -> bool:
    """Whether every register load and store of `s` indexes inside its array for every
    value the loops' ranges allow."""
    return all(
        in_bounds(x.indices, x.buffer.shape, ranges)
        for x in walk(s)
        if isinstance(x, BufferLoad | BufferStore) and x.buffer.scope == "local"
    )


def _vars(e: Expr | tuple[Expr, ...]) -> set[Var]:
    return {x for x in walk(e) if isinstance(x, Var)}


__all__ = ["unguard_register_updates"]
