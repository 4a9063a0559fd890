"""Whole operand tiles for CUDA tensor-core steps: a shared tile that a fragment load reads
is written everywhere, including the rows and columns a ragged tile's guard skipped.

A tensor-core step reads a 16 x 16 operand tile whole. Along the product's rows or columns,
what a skipped element holds stays in its own row or column of the result, which no reader
uses (`pass_tensor_guards`); along the reduction (the keys of a weighted sum) it reaches
every result. So a store into such a tile loses its guard where that is safe: every load
of its value is on chip and provably inside its array, or reads a kernel input, at an index
clamped into the input's bounds; the stored element is provably inside the tile. Each
element past the bound is then a real, finite value (a clamped input, or what the value's
own mask makes of it: a weight past the cache is 0), written to a slot no other iteration
writes.

    if (key < m) v_s[key - k0, c] = v[key, c]   ->   v_s[key - k0, c] = v[min(key, m - 1), c]
    if (key < m) p_s[r, key - k0] = select(key <= r + m - n, exp(..), 0)   ->   unguarded
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .annotation_keys import TENSORIZE
from .expr import Buffer, BufferLoad
from .pass_clamp_copies import clamped_load, loop_ranges
from .simplify import Ranges, conjunction, conjuncts, in_bounds
from .stmt import BufferStore, For, IfThenElse, PrimFunc, Stmt
from .visit import free_vars, rewrite, walk


def fill_tensor_operands(func: PrimFunc) -> PrimFunc:
    """Every guarded store into a shared tile a tensorized nest reads, unguarded where safe
    (see module)."""
    tiles = _operand_tiles(func)
    if not tiles:
        return func
    inputs = {b for b in func.params if b.scope == "global"}
    ranges = loop_ranges(func)
    dims = set(func.shape_vars)

    def post(n: Any) -> Stmt | None:
        if not isinstance(n, IfThenElse) or n.else_case is not None:
            return None
        chain: list[For] = []
        inner: Any = n.then_case
        while isinstance(inner, For):
            chain.append(inner)
            inner = inner.body
        if not isinstance(inner, BufferStore) or inner.buffer not in tiles:
            return None
        # only the bounds of symbolic extents go (a tile's ragged end); a bound on the
        # threads that overrun a tile keeps its copies from fetching rows nobody reads
        terms = conjuncts(n.cond)
        kept = [t for t in terms if not set(free_vars(t)) & dims]
        filled = _filled(inner, inputs, ranges) if len(kept) < len(terms) else None
        if filled is None:
            return None
        out: Stmt = filled
        for lp in reversed(chain):
            out = dataclasses.replace(lp, body=out)
        return IfThenElse(conjunction(kept), out) if kept else out

    body = rewrite(func.body, post)
    return func if body is func.body else dataclasses.replace(func, body=body)


def _operand_tiles(func: PrimFunc) -> set[Buffer]:
    """The shared buffers tensorized fragment loads read."""
    tiles: set[Buffer] = set()
    for n in walk(func.body):
        if isinstance(n, For) and TENSORIZE in dict(n.annotations):
            for load in walk(n.body):
                if isinstance(load, BufferLoad) and load.buffer.scope.startswith("shared"):
                    tiles.add(load.buffer)
    return tiles


def _filled(store: BufferStore, inputs: set[Buffer], ranges: Ranges) -> BufferStore | None:
    """`store` with its input loads clamped, where every other access is on chip and inside
    its array; None where one is not."""
    if not in_bounds(store.indices, store.buffer.shape, ranges):
        return None
    for load in walk(store.value):
        if not isinstance(load, BufferLoad) or load.buffer in inputs:
            continue
        if not load.buffer.scope.startswith(("shared", "local")):
            return None
        if not in_bounds(load.indices, load.buffer.shape, ranges):
            return None

    def clamp(n: Any) -> Any:
        return clamped_load(n, ranges) if isinstance(n, BufferLoad) and n.buffer in inputs else None

    return dataclasses.replace(store, value=rewrite(store.value, clamp))
