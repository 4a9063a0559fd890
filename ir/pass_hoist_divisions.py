"""Block-invariant divisions for CUDA: an integer division or remainder by a runtime size
whose operands every thread of a block shares (block indices, symbolic dims) is computed
once, at the top of the block, into a register.

Index arithmetic over symbolic dims divides by them (`blockIdx.x % ((n + 7) / 8)`: a
block's token tile), and a 64-bit division by a value nvcc cannot see is a subroutine of
tens of instructions. Written into every guard and index of an unrolled loop, nvcc left 151
of them in Llama-3-8B's prompt attention, most inside its key loops:

    for k: ... if (((blockIdx_x % ((n + 7) / 8)) * 8 + r) < n) ...        ->
    tf_div_0[0] = (n + 7) / 8;  tf_div_1[0] = blockIdx_x % tf_div_0[0];
    for k: ... if ((tf_div_1[0] * 8 + r) < n) ...
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .dtypes import is_int
from .expr import BinOp, Buffer, BufferLoad, Const, Expr, Var, const
from .gpu_launch import CLUSTER_TAG, GRID_TAGS
from .stmt import Allocate, BufferStore, For, PrimFunc, SeqStmt, Stmt
from .visit import descend, rewrite, walk

_DIVIDES = ("floordiv", "floormod", "div")


def hoist_block_divisions(func: PrimFunc) -> PrimFunc:
    """Every block-invariant integer division by a non-constant (see module) hoisted to the
    top of the innermost block-level loop above it."""
    dims = set(func.shape_vars)

    def visit(s: Any, outer: frozenset[Var]) -> Any:
        if isinstance(s, For) and _block_level(s):
            inside = outer | {s.var}
            body = visit(s.body, inside)
            if not any(isinstance(n, For) and _block_level(n) for n in walk(body)):
                body = _hoist(body, dims | inside, s.var.name)
            return dataclasses.replace(s, body=body)
        rebuilt = descend(s, outer, visit)
        return s if rebuilt is None else rebuilt

    return dataclasses.replace(func, body=visit(func.body, frozenset()))


def _block_level(loop: For) -> bool:
    """A loop over the grid's blocks or a cluster's ranks: the same for a block's threads."""
    return loop.kind == "thread_binding" and loop.thread in (*GRID_TAGS, CLUSTER_TAG)


def _hoist(body: Stmt, invariant: set[Var], tag: str) -> Stmt:
    """`body` with its invariant divisions read from registers set at its top."""
    held: dict[Expr, Buffer] = {}
    stores: list[Stmt] = []

    def shared(e: Expr) -> bool:  # every thread of the block computes the same value
        for n in walk(e):
            if isinstance(n, Var) and n not in invariant:
                return False
            if isinstance(n, BufferLoad) and n.buffer not in held.values():
                return False
        return True

    def post(n: Any) -> Any:
        if not (isinstance(n, BinOp) and n.op in _DIVIDES and is_int(n.dtype)):
            return None
        if isinstance(n.b, Const) or not shared(n):
            return None
        buf = held.get(n)
        if buf is None:
            buf = Buffer(f"tf_div_{tag}_{len(held)}", (const(1),), n.dtype, "local")
            held[n] = buf
            stores.append(BufferStore(buf, (const(0),), n))
        return BufferLoad(buf, (const(0),))

    new = rewrite(body, post)
    if not held:
        return body
    out: Stmt = SeqStmt((*stores, new))
    for buf in reversed(list(held.values())):
        out = Allocate(buf, out)
    return out
