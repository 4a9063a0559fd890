"""Read and write regions of blocks, derived from the buffer accesses in their bodies."""

from __future__ import annotations

import dataclasses
from typing import Any

from .expr import Buffer, BufferLoad, Const, Expr, const
from .simplify import linear
from .stmt import Block, BufferRegion, BufferStore, Range
from .visit import walk


def accesses(
    root: Any,
) -> tuple[dict[Buffer, list[tuple[Expr, ...]]], dict[Buffer, list[tuple[Expr, ...]]]]:
    """Index tuples of every load and store in `root`, per buffer (reads, writes)."""
    reads: dict[Buffer, list[tuple[Expr, ...]]] = {}
    writes: dict[Buffer, list[tuple[Expr, ...]]] = {}
    for n in walk(root):
        if isinstance(n, BufferLoad):
            reads.setdefault(n.buffer, []).append(n.indices)
        elif isinstance(n, BufferStore):
            writes.setdefault(n.buffer, []).append(n.indices)
    return reads, writes


def _dim_range(indices: list[Expr], extent: Expr) -> Range:
    first = indices[0]
    if all(i == first for i in indices):
        return Range(first, const(1))
    forms = [linear(i) for i in indices]
    terms0 = forms[0][0]
    if all(t == terms0 for t, _ in forms):
        consts = [c for _, c in forms]
        lo = min(consts)
        base = forms[consts.index(lo)]
        from .simplify import from_linear

        return Range(from_linear(base[0], base[1]), const(max(consts) - lo + 1))
    return Range(const(0), extent)


def region_of(buffer: Buffer, index_list: list[tuple[Expr, ...]]) -> BufferRegion:
    """The hull of a list of accesses to one buffer, per dimension."""
    dims = []
    for d, extent in enumerate(buffer.shape):
        dims.append(_dim_range([idx[d] for idx in index_list], extent))
    return BufferRegion(buffer, tuple(dims))


def with_regions(block: Block) -> Block:
    """The block with `reads`/`writes` recomputed from its body and init."""
    reads, writes = accesses(block.body)
    if block.init is not None:
        _, init_writes = accesses(block.init)
        for b, lst in init_writes.items():
            writes.setdefault(b, []).extend(lst)
    local = set(block.alloc_buffers)
    r = tuple(region_of(b, lst) for b, lst in reads.items() if b not in local)
    w = tuple(region_of(b, lst) for b, lst in writes.items() if b not in local)
    return dataclasses.replace(block, reads=r, writes=w)


def is_unit(r: Range) -> bool:
    """True for a one-element range."""
    return isinstance(r.extent, Const) and r.extent.value == 1
