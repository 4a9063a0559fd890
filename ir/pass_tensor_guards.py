"""Unguarded tensor-core tiles for CUDA: a warp's tensor-core step runs on whole 16 x 16
tiles, so a guard inside a tensorized nest (a tile's rows past a symbolic extent) has no
instruction to become.

A tile of queries whose tokens run past the prompt (`row < n`) or of keys past the cache
(`key < m`) guards each element of its fragment loads, MMAs and stores. Where every buffer
of the guarded statement is on chip (shared memory or fragments) and the loops' ranges
prove every access inside its array, the guard can go: the rows and columns past the
extent compute values of their own (a product's row depends on its operand's row alone, a
column on its column), the stores stay inside the on-chip tiles, and every reader of those
values outside the tile runs under the same bounds.

    for i, j (tensorized mma_store_f32): if (i0 + i < n && j0 + j < m) s[i, j] = acc[i, j]
    ->  for i, j (tensorized): s[i, j] = acc[i, j]
"""

from __future__ import annotations

import dataclasses

from .annotation_keys import TENSORIZE
from .expr import BufferLoad
from .pass_clamp_copies import loop_ranges
from .simplify import Ranges, in_bounds
from .stmt import BufferStore, For, IfThenElse, PrimFunc, Stmt
from .visit import rewrite, walk

_ON_CHIP = ("shared", "mma.")


def unguard_tensor_tiles(func: PrimFunc) -> PrimFunc:
    """Every tensorized nest without the guard around its one statement, where the
    statement touches on-chip arrays only, each access provably inside (see module)."""
    ranges = loop_ranges(func)

    def post(s: object) -> Stmt | None:
        if isinstance(s, For) and TENSORIZE in dict(s.annotations):
            return _unguarded(s, ranges)
        return None

    return dataclasses.replace(func, body=rewrite(func.body, post))


def _unguarded(s: For, ranges: Ranges) -> For | None:
    """The nest `s` with its innermost guard dropped; None where it keeps it."""
    chain = [s]
    while isinstance(chain[-1].body, For):
        chain.append(chain[-1].body)  # type: ignore[arg-type]
    guarded = chain[-1].body
    if not isinstance(guarded, IfThenElse) or guarded.else_case is not None:
        return None
    store = guarded.then_case
    if not isinstance(store, BufferStore):
        return None
    accesses = [store, *(n for n in walk(store.value) if isinstance(n, BufferLoad))]
    for a in accesses:
        if not a.buffer.scope.startswith(_ON_CHIP):
            return None
        if not in_bounds(a.indices, a.buffer.shape, ranges):
            return None
    body: Stmt = store
    for lp in reversed(chain):
        body = dataclasses.replace(lp, body=body)
    return body  # type: ignore[return-value]
