"""Inlining primitives: compute_inline folds a producer into its readers,
reverse_compute_inline folds an epilogue into its producer."""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import ScheduleError
from .expr import BufferLoad
from .instruction_traits import primitive
from .regions import with_regions
from .schedule_state import ScheduleState
from .schedule_tree import (
    EMPTY,
    blocks,
    children,
    is_identity_write,
    map_stmt,
    reads_of,
    root_body,
    store_of,
    top_index,
    with_root,
    writes_of,
)
from .stmt import Block, BlockRealize, BufferStore, Stmt
from .trace import RV
from .visit import rewrite, substitute, walk


@primitive()
def compute_inline(state: ScheduleState, block: RV) -> None:
    """Inline a spatial block's expression into every reader of its buffer.

    B[i] = A[i] + 1;  C[i] = B[i] * 2        compute_inline(B) ->
    C[i] = (A[i] + 1) * 2        (B's allocation goes too)
    """
    br, _ = state.block(block)
    blk = br.block
    store = store_of(blk)
    if blk.init is not None or any(iv.kind == "reduce" for iv in blk.iter_vars):
        raise ScheduleError(f"cannot inline {blk.name!r}: it is a reduction")
    if store is None or not is_identity_write(blk, store.indices):
        raise ScheduleError(
            f"cannot inline {blk.name!r}: it must store at exactly its spatial iter vars"
        )
    buf = store.buffer
    state.check_sole_writer(blk, buf, "compute_inline")
    if buf in state.func.params:
        raise ScheduleError(f"cannot inline {blk.name!r}: it writes the function output {buf.name}")
    if any(isinstance(n, BufferLoad) and n.buffer == buf for n in walk(store.value)):
        raise ScheduleError(f"cannot inline {blk.name!r}: it reads its own output")
    order = [b.block for b, _ in blocks(state.func)]
    start = next(i for i, b in enumerate(order) if b.name == blk.name)
    needs = reads_of(blk)
    for later in order[start + 1 :]:
        if buf in reads_of(later):
            clobbered = [b for b in order[start + 1 : order.index(later)] if writes_of(b) & needs]
            if clobbered:
                raise ScheduleError(
                    f"cannot inline {blk.name!r} into {later.name!r}: block "
                    f"{clobbered[0].name!r} writes a buffer it reads in between"
                )

    def inline_load(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer == buf:
            return substitute(store.value, dict(zip(store.indices, n.indices, strict=True)))  # type: ignore[arg-type]
        return None

    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize):
            if s.block.name == blk.name:
                return EMPTY
            if buf in reads_of(s.block):
                nb = dataclasses.replace(
                    s.block,
                    body=rewrite(s.block.body, inline_load),
                    init=None if s.block.init is None else rewrite(s.block.init, inline_load),
                )
                return dataclasses.replace(s, block=with_regions(nb))
        return None

    body = map_stmt(root_body(state.func), fix)
    allocs = tuple(b for b in state.func.root.alloc_buffers if b != buf)
    state.func = with_root(state.func, body, allocs)


@primitive()
def reverse_compute_inline(state: ScheduleState, block: RV) -> None:
    """Fold a spatial consumer (an epilogue) into its single spatial producer.

    B[i] = A[i] + 1;  C[i] = max(B[i], 0)        reverse_compute_inline(C) ->
    C[i] = max(A[i] + 1, 0)        (block "B" now writes C; B's allocation goes)
    """
    br, _ = state.block(block)
    blk = br.block
    store = store_of(blk)
    if blk.init is not None or any(iv.kind == "reduce" for iv in blk.iter_vars) or store is None:
        raise ScheduleError(
            f"cannot reverse-inline {blk.name!r}: it must be a spatial single store"
        )
    allocs = state.func.root.alloc_buffers
    cands = [b for b in reads_of(blk) if b in allocs]
    producers = [(b, [p for p, _ in blocks(state.func) if b in writes_of(p.block)]) for b in cands]
    producers = [(b, ps) for b, ps in producers if ps]
    if len(producers) != 1 or len(producers[0][1]) != 1:
        raise ScheduleError(
            f"cannot reverse-inline {blk.name!r}: it must read exactly one "
            "intermediate buffer with one producer"
        )
    buf, (pbr,) = producers[0]
    pblk = pbr.block
    pstore = store_of(pblk)
    if pblk.init is not None or any(iv.kind == "reduce" for iv in pblk.iter_vars):
        raise ScheduleError(
            f"cannot reverse-inline {blk.name!r}: its producer {pblk.name!r} is a "
            "reduction whose values "
            "are not final until it finishes"
        )
    if pstore is None or not is_identity_write(pblk, pstore.indices):
        raise ScheduleError(f"producer {pblk.name!r} must store at exactly its spatial iter vars")
    others = [
        b.block.name
        for b, _ in blocks(state.func)
        if buf in reads_of(b.block) and b.block.name != blk.name
    ]
    if others:
        raise ScheduleError(
            f"{buf.name} is also read by {', '.join(others)}; cannot fold {blk.name!r} away"
        )
    loads = [n for n in walk(store.value) if isinstance(n, BufferLoad) and n.buffer == buf]
    idx = loads[0].indices
    if any(ld.indices != idx for ld in loads) or not is_identity_write(blk, idx):
        raise ScheduleError(f"block {blk.name!r} must read {buf.name} at exactly its iter vars")
    ppos = top_index(
        state.func, lambda n: isinstance(n, BlockRealize) and n.block.name == pblk.name
    )
    cpos = top_index(state.func, lambda n: isinstance(n, BlockRealize) and n.block.name == blk.name)
    kids = children(root_body(state.func))
    other_reads = reads_of(blk) - {buf}
    for k in range(ppos + 1, cpos):
        for n in walk(kids[k]):
            if isinstance(n, Block) and writes_of(n) & other_reads:
                raise ScheduleError(
                    f"block {n.name!r} writes a buffer {blk.name!r} reads between the two blocks"
                )
    # consumer iter var at dim d of its load -> producer's index expression at dim d
    mapping = {v: pstore.indices[d] for d, v in enumerate(idx)}
    value = rewrite(
        store.value,
        lambda n: pstore.value if isinstance(n, BufferLoad) and n.buffer == buf else None,
    )
    new_store = BufferStore(
        store.buffer,
        tuple(substitute(i, mapping) for i in store.indices),
        substitute(value, mapping),
    )
    new_pblk = with_regions(dataclasses.replace(pblk, body=new_store))

    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize):
            if s.block.name == blk.name:
                return EMPTY
            if s.block.name == pblk.name:
                return dataclasses.replace(s, block=new_pblk)
        return None

    body = map_stmt(root_body(state.func), fix)
    state.func = with_root(state.func, body, tuple(b for b in allocs if b != buf))
