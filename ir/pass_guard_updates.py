"""Guarded reduction updates for CUDA: a masked-off term is skipped, not added as zero.

rfactor and the cross-thread lowering move a reduction's guards into its value, so every
partial slot starts from the identity. On a GPU that costs a select per term and splits the
multiply-add in two; a guard around the update costs neither and skips the term's loads:

    acc[v] = acc[v] + ((j < m) ? p[j] * vc[j, v] : 0.0f)
    ->  if (j < m) acc[v] = acc[v] + p[j] * vc[j, v]

Only sums are lifted (a max or min against -inf/+inf is a select and a min/max, no branch
needed), and only a Select whose other side is 0, nested ones into one condition. The C
target keeps the select form, which its compiler vectorizes.
"""

from __future__ import annotations

import dataclasses

from .expr import BinOp, BufferLoad, Const, Expr, Select, logical_and
from .schedule_tree import reduction_update
from .stmt import BufferStore, IfThenElse, PrimFunc, Stmt
from .visit import rewrite


def _is(e: Expr, value: float) -> bool:
    return isinstance(e, Const) and float(e.value) == value


def _lift(e: Expr, ident: float) -> tuple[Expr | None, Expr]:
    """(condition, term) with `e` = cond ? term : identity; (None, e) when it is not."""
    cond: Expr | None = None
    while isinstance(e, Select) and _is(e.false_value, ident):
        cond = e.cond if cond is None else logical_and(cond, e.cond)
        e = e.true_value
    return cond, e


def guarded_update(s: BufferStore) -> Stmt | None:
    """`s` as a guarded update when its term is a Select against the identity; else None."""
    found = reduction_update(s)
    if found is None:
        return None
    op, term = found
    if op != "add":
        return None
    cond, inner = _lift(term, 0.0)
    if cond is None:
        return None
    acc = BufferLoad(s.buffer, s.indices)
    return IfThenElse(cond, dataclasses.replace(s, value=BinOp(op, acc, inner)))


def guard_updates(func: PrimFunc) -> PrimFunc:
    """Lift identity Selects out of every reduction update of `func` (see the module)."""

    def post(n: object) -> Stmt | None:
        return guarded_update(n) if isinstance(n, BufferStore) else None

    return dataclasses.replace(func, body=rewrite(func.body, post))
