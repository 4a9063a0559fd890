"""Padding primitive: pad_spatial grows a block's spatial domain to tile multiples, so a
shape no tile divides (333 tokens, a 777-wide layer) runs the same register tile as its
nearest multiple instead of a predicate in the innermost loop."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .errors import ScheduleError
from .expr import Buffer, BufferLoad, Const, Expr, Var, const, min_
from .instruction_traits import primitive
from .prim_caches import copy_nest_of
from .regions import with_regions
from .schedule_state import ScheduleState
from .schedule_tree import (
    children,
    is_identity_write,
    make_seq,
    root_body,
    store_of,
    with_root,
)
from .stmt import TRUE, Block, BlockRealize, BufferStore, For, IterVar, Range, Stmt
from .tensor_expr import NameSupply
from .trace import RV
from .visit import rewrite, walk


@primitive(results="list")
def pad_spatial(state: ScheduleState, block: RV, padding: Sequence[int]) -> list[RV]:
    """Grow the domain of `block`'s spatial iter vars by `padding` (one count per iter var,
    0 for a reduction): the block computes a padded copy of its output, read from padded
    copies of its inputs, and a write-back block stores the original region.

    Padded inputs repeat their last row (edge padding): the extra outputs are never stored,
    so any value would do, and real values cannot overflow or divide by zero. Returns the
    new blocks: one per padded input in the order the block first reads them, then the
    write-back. Inline an input's copy (compute_inline) to read it in place with a clamped
    index, or transform its layout to pack it.

        for i in range(333): for j in range(777): for k in range(555):
            dense[i, j] += x[i, k] * w[j, k]
        pad_spatial(dense, [3, 7, 0]) ->
        x_pad[v0, v1] = x[min(v0, 332), v1]          (336 x 555)
        w_pad[v0, v1] = w[min(v0, 776), v1]          (784 x 555)
        for i in range(336): for j in range(784): for k in range(555):
            dense_pad[i, j] += x_pad[i, k] * w_pad[j, k]
        dense[v0, v1] = dense_pad[v0, v1]            (333 x 777, "dense_pad_write_back")
    """
    br, _ = state.block(block)
    blk = br.block
    grow = _padding_by_var(blk, padding)
    pos, nest = state.root_nest_of(blk.name, "pad_spatial")
    _check_perfect_nest(nest, br)
    store = store_of(blk)
    if store is None or not is_identity_write(blk, store.indices):
        raise ScheduleError(
            f"pad_spatial needs block {blk.name!r} to store at exactly its spatial iter vars"
        )
    out = store.buffer
    state.check_sole_writer(blk, out, "pad_spatial")
    names = state.names()
    out_dims = [ix if isinstance(ix, Var) and ix in grow else None for ix in store.indices]
    out_scope = "global" if out in state.func.params else out.scope
    out_pad = _padded(out, out_dims, grow, names, out_scope)
    swaps: dict[Buffer, Buffer] = {out: out_pad}
    copies: list[Stmt] = []  # each named for the padded buffer it fills
    for buf, dims in _reads(blk, out, grow):
        if all(v is None for v in dims):
            continue
        pad = _padded(buf, dims, grow, names, "global")
        swaps[buf] = pad
        copies.append(_edge_copy(names, buf, pad))
    copy_names = [pad.name for pad in swaps.values() if pad is not out_pad]

    def swap(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer in swaps:
            return BufferLoad(swaps[n.buffer], n.indices)
        if isinstance(n, BufferStore) and n.buffer in swaps:
            return BufferStore(swaps[n.buffer], n.indices, n.value)
        return None

    ivs = tuple(
        dataclasses.replace(iv, dom=Range(iv.dom.min, const(_extent(iv) + grow[iv.var])))
        if iv.var in grow
        else iv
        for iv in blk.iter_vars
    )
    new_blk = with_regions(
        dataclasses.replace(
            blk,
            iter_vars=ivs,
            body=rewrite(blk.body, swap),
            init=None if blk.init is None else rewrite(blk.init, swap),
        )
    )
    loop_extents = {
        v: iv.dom.extent for iv, v in zip(ivs, br.iter_values, strict=True) if iv.var in grow
    }
    write_back = names.fresh(f"{out_pad.name}_write_back")
    kids = children(root_body(state.func))
    kids[pos] = _regrow(nest, loop_extents, new_blk)
    kids.insert(pos + 1, copy_nest_of(names, write_back, out_pad, out, out.shape))
    kids[pos:pos] = copies
    allocs = (*state.func.root.alloc_buffers, *swaps.values())
    state.func = with_root(state.func, make_seq(kids), allocs)
    return [*(state.new("b", name) for name in copy_names), state.new("b", write_back)]


def _padding_by_var(blk: Block, padding: Sequence[int]) -> dict[Var, int]:
    """The padding of each grown iter var; ScheduleError for a count that cannot apply."""
    if len(padding) != len(blk.iter_vars) or not all(
        isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding
    ):
        raise ScheduleError(
            f"pad_spatial needs one count >= 0 per iter var of block {blk.name!r} "
            f"({', '.join(iv.var.name for iv in blk.iter_vars)}), got {list(padding)!r}"
        )
    grow: dict[Var, int] = {}
    for iv, p in zip(blk.iter_vars, padding, strict=True):
        if p == 0:
            continue
        if iv.kind != "spatial":
            raise ScheduleError(
                f"pad_spatial grows spatial iter vars only; {iv.var.name} of block "
                f"{blk.name!r} is a reduction (padding it would add terms to every output)"
            )
        if not isinstance(iv.dom.min, Const) or iv.dom.min.value != 0:
            raise ScheduleError(f"pad_spatial needs {iv.var.name} to start at 0")
        _extent(iv)
        grow[iv.var] = p
    if not grow:
        raise ScheduleError(f"pad_spatial got no padding for block {blk.name!r}; nothing to do")
    return grow


def _extent(iv: IterVar) -> int:
    """The constant extent of `iv`'s domain; ScheduleError for a symbolic one."""
    if not isinstance(iv.dom.extent, Const):
        raise ScheduleError(
            f"pad_spatial needs a constant extent for {iv.var.name}, got {iv.dom.extent}"
        )
    return int(iv.dom.extent.value)


def _check_perfect_nest(nest: Stmt, br: BlockRealize) -> None:
    """Refuse a nest that is not one loop per iter var directly above the block (pad first,
    then split: the padded extents are what the tiles divide)."""
    loops: list[For] = []
    s = nest
    while isinstance(s, For):
        loops.append(s)
        s = s.body
    bound = [v for v in br.iter_values if isinstance(v, Var)]
    if (
        s is not br
        or br.predicate != TRUE
        or len(bound) != len(br.iter_values)
        or sorted(v.name for v in bound) != sorted(lp.var.name for lp in loops)
    ):
        raise ScheduleError(
            f"pad_spatial needs block {br.block.name!r} directly under one loop per iter var "
            "(apply it before split, fuse or compute_at)"
        )


def _reads(blk: Block, out: Buffer, grow: dict[Var, int]) -> list[tuple[Buffer, list[Var | None]]]:
    """Each buffer `blk` reads (its own output aside), in the order of first use, with the
    grown iter var indexing each of its dims (None where none does); ScheduleError where a
    grown var appears in an index other than alone, or a dim it indexes is also read at
    another index."""
    seen: dict[Buffer, list[set[Expr]]] = {}
    for n in walk(blk.body):
        if isinstance(n, BufferLoad) and n.buffer != out:
            per_dim = seen.setdefault(n.buffer, [set() for _ in n.indices])
            for d, ix in enumerate(n.indices):
                per_dim[d].add(ix)
    found: list[tuple[Buffer, list[Var | None]]] = []
    for buf, per_dim in seen.items():
        dims: list[Var | None] = []
        for d, exprs in enumerate(per_dim):
            grown = {v for ix in exprs for v in walk(ix) if isinstance(v, Var) and v in grow}
            if not grown:
                dims.append(None)
                continue
            (only,) = exprs if len(exprs) == 1 else (None,)
            if not (isinstance(only, Var) and only in grow):
                shown = ", ".join(sorted(str(ix) for ix in exprs))
                raise ScheduleError(
                    f"pad_spatial needs dim {d} of {buf.name} indexed by a padded iter var "
                    f"alone, but block {blk.name!r} reads it at {shown}"
                )
            dims.append(only)
        found.append((buf, dims))
    return found


def _padded(
    buf: Buffer, dims: Sequence[Var | None], grow: dict[Var, int], names: NameSupply, scope: str
) -> Buffer:
    """A new buffer like `buf`, each dim indexed by a grown iter var longer by its padding."""
    shape = []
    for d, v in zip(buf.shape, dims, strict=True):
        if v is None:
            shape.append(d)
        elif isinstance(d, Const):
            shape.append(const(int(d.value) + grow[v]))
        else:
            raise ScheduleError(f"pad_spatial needs constant dims of {buf.name}, got {d}")
    return Buffer(names.fresh(f"{buf.name}_pad"), tuple(shape), buf.dtype, scope)


def _edge_copy(names: NameSupply, src: Buffer, dst: Buffer) -> Stmt:
    """Copy `src` into its padded `dst`, repeating the last element along each grown dim."""

    def clamp(idx: tuple[Expr, ...]) -> tuple[Expr, ...]:
        return tuple(
            v if s == d else min_(v, int(s.value) - 1)  # type: ignore[attr-defined]
            for v, s, d in zip(idx, src.shape, dst.shape, strict=True)
        )

    return copy_nest_of(names, dst.name, src, dst, dst.shape, clamp)


def _regrow(nest: Stmt, extents: dict[Expr, Expr], blk: Block) -> Stmt:
    """The perfect nest around `blk`, each loop bound to a grown iter var at its new extent."""
    if isinstance(nest, For):
        extent = extents.get(nest.var, nest.extent)
        return dataclasses.replace(nest, extent=extent, body=_regrow(nest.body, extents, blk))
    assert isinstance(nest, BlockRealize)
    return dataclasses.replace(nest, block=blk)
