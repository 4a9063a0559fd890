"""Auto-unroll: short serial loops under an annotated loop are unrolled when lowered.

MetaSchedule's explicit-unroll decision as a loop annotation. Under a loop annotated
`auto_unroll_max_step = N` (N > 0), every serial loop of constant extent whose whole nest
executes at most N statements (a vectorized loop counts as one) becomes an unrolled loop;
longer loops, and loops of other kinds, stay as they are. With N = 16, for example:

    for i (annotated 16):                for i (annotated 16):
      for k in 4:                          for k in 4 (unrolled):
        for j in 4: C[...] += ...   ->       for j in 4 (unrolled): C[...] += ...
      for r in 64: D[...] = ...            for r in 64: D[...] = ...   (64 steps > 16)

The C renderer then emits `#pragma GCC unroll` for them (within its own caps), and the cost
model's features see them as unrolled.
"""

from __future__ import annotations

import dataclasses

from .annotation_keys import AUTO_UNROLL
from .expr import Const
from .stmt import Allocate, For, IfThenElse, SeqStmt, Stmt


def steps(s: Stmt | None) -> int | None:
    """How many statements the nest executes (vector loops count once); None if symbolic."""
    if s is None:
        return 0
    if isinstance(s, For):
        inner = steps(s.body)
        if inner is None or not isinstance(s.extent, Const):
            return None
        return inner if s.kind == "vectorized" else int(s.extent.value) * inner
    if isinstance(s, SeqStmt):
        total = 0
        for child in s.stmts:
            n = steps(child)
            if n is None:
                return None
            total += n
        return total
    if isinstance(s, IfThenElse):
        a, b = steps(s.then_case), steps(s.else_case)
        return None if a is None or b is None else a + b
    if isinstance(s, Allocate):
        return steps(s.body)
    return 1


def apply_auto_unroll(s: Stmt, limit: int = 0) -> Stmt:
    """Mark the short serial loops under every annotated loop of `s` unrolled (see module)."""
    if isinstance(s, For):
        own = dict(s.annotations).get(AUTO_UNROLL)
        lim = int(own) if own is not None else limit
        body = apply_auto_unroll(s.body, lim)
        kind = s.kind
        if lim > 0 and kind == "serial" and isinstance(s.extent, Const):
            n = steps(dataclasses.replace(s, body=body))
            if n is not None and n <= lim:
                kind = "unrolled"
        if body is s.body and kind == s.kind:
            return s
        return dataclasses.replace(s, body=body, kind=kind)
    if isinstance(s, SeqStmt):
        stmts = tuple(apply_auto_unroll(c, limit) for c in s.stmts)
        if all(a is b for a, b in zip(stmts, s.stmts, strict=True)):
            return s
        return SeqStmt(stmts)
    if isinstance(s, IfThenElse):
        then = apply_auto_unroll(s.then_case, limit)
        other = None if s.else_case is None else apply_auto_unroll(s.else_case, limit)
        if then is s.then_case and other is s.else_case:
            return s
        return dataclasses.replace(s, then_case=then, else_case=other)
    if isinstance(s, Allocate):
        body = apply_auto_unroll(s.body, limit)
        return s if body is s.body else dataclasses.replace(s, body=body)
    return s
