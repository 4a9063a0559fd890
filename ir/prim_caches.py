"""Cache and layout primitives: cache_read, cache_write, set_scope, storage_align and
transform_layout, which add buffers, move them between storage scopes or change their shape."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ScheduleError
from .expr import SCOPES, Buffer, BufferLoad, Expr, Var, const
from .instruction_traits import primitive
from .layout import LayoutMap
from .lower import STORAGE_ALIGN, storage_aligns
from .regions import with_regions
from .schedule_state import ScheduleState
from .schedule_tree import (
    block_replacer,
    children,
    make_seq,
    map_stmt,
    read_only_buffers,
    reads_of,
    root_body,
    top_index,
    with_root,
    writes_of,
)
from .stmt import TRUE, Block, BlockRealize, BufferStore, For, IterVar, Range, Stmt
from .tensor_expr import NameSupply
from .trace import RV
from .visit import rewrite, walk


@primitive(results="one")
def cache_read(state: ScheduleState, block: RV, read_buffer_index: int, storage_scope: str) -> RV:
    """Copy a buffer `block` reads into a new buffer of `storage_scope` just before it.

    The copy covers the whole buffer; compute_at the returned block to copy a tile.

        C[i] = A[i] * 2        cache_read(C, 0, "shared") ->
        A_shared[v_ax0] = A[v_ax0];  C[i] = A_shared[i] * 2
    """
    return cache_copy(state, block, read_buffer_index, storage_scope, write=False)


@primitive(results="one")
def cache_write(state: ScheduleState, block: RV, write_buffer_index: int, storage_scope: str) -> RV:
    """Make `block` write a new buffer of `storage_scope`, copied back right after its nest.

    Reverse-compute-at the returned block to write back tile by tile.

        C[i] = A[i] * 2        cache_write(C, 0, "local") ->
        C_local[i] = A[i] * 2;  C[v_ax0] = C_local[v_ax0]        (block "C_write_back")
    """
    return cache_copy(state, block, write_buffer_index, storage_scope, write=True)


def cache_copy(state: ScheduleState, block: RV, index: int, storage_scope: str, write: bool) -> RV:
    """The body of cache_read (`write` False) and cache_write: swap one buffer of `block` for
    a new buffer of `storage_scope` and add a copy nest before (read) or after (write) the
    block's root nest; returns a handle to the copy block."""
    br, _ = state.block(block)
    blk = br.block
    check_scope(storage_scope)
    if write:
        buf = written_buffer(blk, index)
        state.check_sole_writer(blk, buf, "cache_write")
    else:
        reads = read_only_buffers(blk)
        if not 0 <= index < len(reads):
            raise ScheduleError(
                f"block {blk.name!r} reads {len(reads)} buffers "
                f"({', '.join(b.name for b in reads)}); "
                f"index {index} is out of range"
            )
        buf = reads[index]
    func = state.func
    pos = top_index(func, lambda n: isinstance(n, BlockRealize) and n.block.name == blk.name)
    for n in walk(children(root_body(func))[pos]):
        if not isinstance(n, Block):
            continue
        if write and n.name != blk.name and (buf in reads_of(n) or buf in writes_of(n)):
            raise ScheduleError(
                f"block {n.name!r} uses {buf.name} in the same loop nest as {blk.name!r}; "
                "a write-back after the nest would come too late for it"
            )
        if not write and buf in writes_of(n):
            raise ScheduleError(
                f"block {n.name!r} writes {buf.name} in the same loop nest as {blk.name!r}; "
                "a copy placed before the nest would miss its values"
            )
    names = state.names()
    cache = Buffer(
        names.fresh(f"{buf.name}_{storage_scope.replace('.', '_')}"),
        buf.shape,
        buf.dtype,
        storage_scope,
    )
    copy_name = names.fresh(f"{buf.name}_write_back") if write else cache.name
    src, dst = (cache, buf) if write else (buf, cache)
    copy_nest = copy_nest_of(names, copy_name, src, dst)
    new_blk = with_regions(replace_buffer(blk, buf, cache, loads_only=not write))
    kids = children(map_stmt(root_body(func), block_replacer(blk.name, new_blk)))
    kids.insert(pos + 1 if write else pos, copy_nest)
    state.func = with_root(func, make_seq(kids), (*func.root.alloc_buffers, cache))
    return state.new("b", copy_name)


@primitive()
def set_scope(state: ScheduleState, block: RV, write_buffer_index: int, storage_scope: str) -> None:
    """Move the intermediate buffer `block` writes to another storage scope.

    On the GPU a reduction computed under a blockIdx loop keeps its result in "shared"
    (every thread of the block reads it) or "local" (only its thread reads it).
    Parameters stay global.

        alloc B: Buffer((64,), 'float32')        set_scope(b_B, 0, "shared") ->
        alloc B: Buffer((64,), 'float32', scope='shared')
    """
    br, _ = state.block(block)
    blk = br.block
    check_scope(storage_scope)
    buf = written_buffer(blk, write_buffer_index)
    if buf in state.func.params:
        raise ScheduleError(
            f"{buf.name} is a parameter of {state.func.name}; parameters stay global"
        )
    new = dataclasses.replace(buf, scope=storage_scope)
    state.func = rewrite(state.func, lambda n: new if n == buf else None)


@primitive()
def storage_align(
    state: ScheduleState, block: RV, write_buffer_index: int, axis: int, factor: int, offset: int
) -> None:
    """Pad the buffer `block` writes so the stride of `axis` is `offset` mod `factor`
    elements (the row of a shared tile then starts in another bank: fewer conflicts).

    Only the next-to-last axis can be aligned (its stride is the padded last dim).

        A_shared: (32, 32), row stride 32        storage_align(A_shared_block, 0, 0, 32, 8) ->
        block annotated storage_align = "A_shared:32:8": lowering allocates (32, 40), stride 40
    """
    br, _ = state.block(block)
    blk = br.block
    buf = written_buffer(blk, write_buffer_index)
    if buf in state.func.params:
        raise ScheduleError(f"{buf.name} is a parameter; only intermediates are padded")
    if axis != len(buf.shape) - 2:
        raise ScheduleError(
            f"storage_align pads the row stride: axis must be {len(buf.shape) - 2} "
            f"for {buf.name}, got {axis}"
        )
    if factor <= 0 or not 0 <= offset < factor:
        raise ScheduleError(f"need factor > 0 and 0 <= offset < factor, got {factor}, {offset}")
    value = f"{buf.name}:{factor}:{offset}"
    kept = tuple((k, x) for k, x in blk.annotations if k != STORAGE_ALIGN)
    new_blk = dataclasses.replace(blk, annotations=(*kept, (STORAGE_ALIGN, value)))
    state.replace_block(blk.name, new_blk)


@primitive()
def transform_layout(
    state: ScheduleState,
    block: RV,
    write_buffer_index: int,
    axis: int | None,
    factor: int | RV | None,
    order: Sequence[int],
) -> None:
    """Change the layout of the intermediate buffer `block` writes: split dim `axis` by
    `factor` (an int or an integer handle from a sampling step, so a replay with another
    decision packs anew), then reorder the dims as `order` (see `layout.LayoutMap`). The
    producer's writes, every consumer's reads and the allocation follow; loops stay.

    Packing a dense weight so 16 output columns are contiguous for every k
    (`transform_layout(w_global_block, 0, 0, 16, [0, 2, 1])`):

        before:  alloc w_global: Buffer((64, 32))
                 w_global[v0, v1] = w[v0, v1]
                 ... x[v_i, v_k] * w_global[v_j, v_k]
        after:   alloc w_global: Buffer((4, 32, 16))
                 w_global[v0 // 16, v1, v0 % 16] = w[v0, v1]
                 ... x[v_i, v_k] * w_global[v_j // 16, v_k, v_j % 16]

    After splitting the consumer's j loop by 16 the indices simplify to (j_0, k, j_1), so
    a vectorized j_1 loads 16 contiguous floats.
    """
    br, _ = state.block(block)
    blk = br.block
    buf = written_buffer(blk, write_buffer_index)
    if buf in state.func.params:
        raise ScheduleError(
            f"{buf.name} is a parameter of {state.func.name}; only intermediates change "
            "layout (cache_read it first)"
        )
    if buf.name in storage_aligns(state.func):
        raise ScheduleError(f"{buf.name} is padded by storage_align; transform its layout first")
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in order):
        raise ScheduleError(f"order must be a list of ints, got {list(order)!r}")
    factor = state.value(factor) if isinstance(factor, RV) else factor
    lmap = LayoutMap(axis, factor, tuple(order))
    lmap.check(buf)
    new = dataclasses.replace(buf, shape=lmap.shape(buf.shape))

    def accesses(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer == buf:
            return BufferLoad(buf, lmap.indices(n.indices))
        if isinstance(n, BufferStore) and n.buffer == buf:
            return BufferStore(buf, lmap.indices(n.indices), n.value)
        return None

    func = rewrite(state.func, accesses)
    func = rewrite(func, lambda n: new if isinstance(n, Buffer) and n == buf else None)

    def regions(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize) and s.block.name != func.root.name:
            touched = reads_of(s.block) | writes_of(s.block)
            if new in touched:
                return dataclasses.replace(s, block=with_regions(s.block))
        return None

    state.func = with_root(func, map_stmt(root_body(func), regions))


def check_scope(scope: str) -> None:
    """Refuse a storage scope the lowering does not know."""
    if scope not in SCOPES:
        raise ScheduleError(f"unknown storage scope {scope!r}; known: {', '.join(SCOPES)}")


def written_buffer(blk: Block, index: int) -> Buffer:
    """The `index`-th buffer `blk` writes; a ScheduleError naming the count when out of range."""
    writes = [w.buffer for w in blk.writes]
    if not 0 <= index < len(writes):
        raise ScheduleError(
            f"block {blk.name!r} writes {len(writes)} buffers; index {index} is out of range"
        )
    return writes[index]


def replace_buffer(blk: Block, old: Buffer, new: Buffer, loads_only: bool) -> Block:
    """`blk` with its loads of `old` (and, unless `loads_only`, its stores) using `new`."""

    def post(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer == old:
            return BufferLoad(new, n.indices)
        if not loads_only and isinstance(n, BufferStore) and n.buffer == old:
            return BufferStore(new, n.indices, n.value)
        return None

    init = None if blk.init is None else rewrite(blk.init, post)
    return dataclasses.replace(blk, body=rewrite(blk.body, post), init=init)


def copy_nest_of(
    names: NameSupply,
    block_name: str,
    src: Buffer,
    dst: Buffer,
    shape: tuple[Expr, ...] | None = None,
    src_index: Callable[[tuple[Expr, ...]], tuple[Expr, ...]] | None = None,
) -> Stmt:
    """Loops over `shape` (src's by default) with one block (`block_name`) storing
    dst[v] = src[src_index(v)] (src[v] by default) elementwise."""
    shape = src.shape if shape is None else shape
    loop_vars = [Var(names.fresh(f"ax{d}")) for d in range(len(shape))]
    ivs = [
        IterVar(Var(names.fresh(f"v_ax{d}")), Range(const(0), e), "spatial")
        for d, e in enumerate(shape)
    ]
    idx = tuple(iv.var for iv in ivs)
    value = BufferLoad(src, idx if src_index is None else src_index(idx))
    blk = with_regions(Block(block_name, tuple(ivs), (), (), BufferStore(dst, idx, value)))
    nest: Stmt = BlockRealize(tuple(loop_vars), TRUE, blk)
    for lv, e in reversed(list(zip(loop_vars, shape, strict=True))):
        nest = For(lv, e, nest)
    return nest
