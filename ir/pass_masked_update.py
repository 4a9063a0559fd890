"""Guarded updates for CUDA: a reduction step that adds `select(cond, x, identity)` becomes
`if (cond) C = C op x`, so the compiler issues one predicated FMA where the select form
costs a multiply, a select and an add for every product.

`rfactor` moves the guards of an imperfect split into the value (so every partial slot is
initialised); a masked reduction carries its mask there too. In the partial sums of a
prompt's key tiles, 40 products a thread share one guard per key:

    acc_rf[r, c] = acc_rf[r, c] + (k < m ? w[r, k] * v[k, c] : 0.0f)   ->
    if (k < m) acc_rf[r, c] = acc_rf[r, c] + w[r, k] * v[k, c]

Adding the identity leaves the accumulator as it is (but for the sign of a zero), so the
two agree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .expr import BinOp, BufferLoad, binop
from .prim_mask import peel_mask
from .schedule_tree import reduction_update
from .simplify import conjunction
from .stmt import BufferStore, IfThenElse, PrimFunc
from .visit import rewrite


def guard_masked_updates(func: PrimFunc) -> PrimFunc:
    """Every `C = C op select(cond, x, identity)` store as `if (cond) C = C op x`."""

    def post(n: Any) -> Any:
        if not isinstance(n, BufferStore):
            return None
        found = reduction_update(n)
        if found is None:
            return None
        op, source = found
        conds, inner = peel_mask(source, op)
        if not conds:
            return None
        acc = BufferLoad(n.buffer, n.indices)
        first = isinstance(n.value, BinOp) and n.value.a == acc
        value = binop(op, acc, inner) if first else binop(op, inner, acc)
        return IfThenElse(conjunction(conds), BufferStore(n.buffer, n.indices, value))

    return dataclasses.replace(func, body=rewrite(func.body, post))
