"""Unguarded register copies for CUDA: a guarded copy of an input into registers reads a
clamped index instead, so the load leaves its branch.

A register copy made by `cache_read` + `compute_at` keeps the predicate of the region it
covers (`row < n` for a query tile's last, ragged rows). Under that branch nvcc can neither
issue the load early nor batch it with its neighbours, and a thread's 32 rows of a key tile
wait for their loads one after another. Every reader of the copy runs under the same
predicate (it would read the input out of bounds otherwise), so what a copy holds where the
predicate fails is never used: reading a clamped, in-bounds element there is as good as
not reading.

    if (r < n) q_l[r, k] = q[r, k]      ->      q_l[r, k] = q[min(r, n - 1), k]

Inputs of the kernel (global parameters, whose shape is their allocation) are read that
way; dims whose index is provably in bounds under the loops' ranges stay as they are, so
vector loads over the innermost dim keep their form. A copy from a block's shared array (or
another register array) loses its guard unclamped where the loops' ranges prove the index
inside the array as lowering sized it (a tile's 8 query rows, of which the last tile may
hold fewer real ones). A register array the threads combine (`ThreadAllReduce`) keeps its
guards: there a thread past the bound must keep the identity it holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .expr import BufferLoad, Const, Expr, Var, max_, min_
from .simplify import Ranges, in_bounds, prove, simplify
from .stmt import BufferStore, For, IfThenElse, PrimFunc, ThreadAllReduce
from .visit import rewrite, walk


def clamp_register_copies(func: PrimFunc) -> PrimFunc:
    """Every `if (c) local[...] = input[idx]` as `local[...] = input[clamped idx]` (module)."""
    inputs = {b for b in func.params if b.scope == "global"}
    ranges = loop_ranges(func)
    combined = {n.buffer for n in walk(func.body) if isinstance(n, ThreadAllReduce)}

    def post(n: Any) -> Any:
        if not isinstance(n, IfThenElse) or n.else_case is not None:
            return None
        store = n.then_case
        if not isinstance(store, BufferStore) or store.buffer.scope != "local":
            return None
        if store.buffer in combined:  # threads past the bound must keep what they hold
            return None
        load = store.value
        if not isinstance(load, BufferLoad):
            return None
        shape = load.buffer.shape
        if load.buffer.scope in ("shared", "local"):  # a block's or thread's own array
            return store if in_bounds(load.indices, shape, ranges) else None
        if load.buffer not in inputs:
            return None
        return dataclasses.replace(store, value=clamped_load(load, ranges))

    body = rewrite(func.body, post)
    return func if body is func.body else dataclasses.replace(func, body=body)


def clamped_load(load: BufferLoad, ranges: Ranges) -> BufferLoad:
    """`load` with each index held inside its dim (`clamped`)."""
    pairs = zip(load.indices, load.buffer.shape, strict=True)
    return dataclasses.replace(load, indices=tuple(clamped(e, d, ranges) for e, d in pairs))


def clamped(index: Expr, dim: Expr, ranges: Ranges) -> Expr:
    """`index` held inside [0, dim): unchanged where the loops' ranges prove it is."""
    if not prove(index >= 0, ranges):
        index = max_(index, 0)
    if not prove(index < dim, ranges):
        index = min_(index, simplify(dim - 1))
    return index


def loop_ranges(func: PrimFunc) -> dict[Var, tuple[int, int]]:
    """Each loop variable with a constant extent and its inclusive range."""
    return {
        s.var: (0, int(s.extent.value) - 1)
        for s in walk(func.body)
        if isinstance(s, For) and isinstance(s.extent, Const) and int(s.extent.value) > 0
    }


__all__ = ["clamp_register_copies", "clamped_load", "loop_ranges"]
