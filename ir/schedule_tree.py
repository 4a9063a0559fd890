"""Finding and replacing loops and blocks inside a PrimFunc's root block (used by Schedule)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from .expr import Buffer, BufferLoad, Const, Expr, Var
from .stmt import Block, BlockRealize, BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt
from .visit import walk


def root_body(func: PrimFunc) -> Stmt:
    """The statement under the root block."""
    return func.body.block.body


def children(s: Stmt) -> list[Stmt]:
    """The statements of a sequence (or the statement itself)."""
    return list(s.stmts) if isinstance(s, SeqStmt) else [s]


def make_seq(stmts: list[Stmt]) -> Stmt:
    """A statement list as one statement, flattening nested sequences."""
    flat: list[Stmt] = []
    for s in stmts:
        if isinstance(s, SeqStmt):
            flat.extend(s.stmts)
        else:
            flat.append(s)
    return flat[0] if len(flat) == 1 else SeqStmt(tuple(flat))


def with_root(func: PrimFunc, body: Stmt, allocs: tuple[Buffer, ...] | None = None) -> PrimFunc:
    """The function with a new root body (and root allocations)."""
    root = func.body.block
    new_root = dataclasses.replace(
        root, body=cleanup(body), alloc_buffers=root.alloc_buffers if allocs is None else allocs
    )
    return dataclasses.replace(func, body=dataclasses.replace(func.body, block=new_root))


def iter_nodes(s: Stmt, loops: tuple[For, ...] = ()) -> Iterator[tuple[Stmt, tuple[For, ...]]]:
    """Every For and BlockRealize under `s` in program order, with the loops above it."""
    if isinstance(s, SeqStmt):
        for c in s.stmts:
            yield from iter_nodes(c, loops)
    elif isinstance(s, For):
        yield s, loops
        yield from iter_nodes(s.body, (*loops, s))
    elif isinstance(s, IfThenElse):
        yield from iter_nodes(s.then_case, loops)
        if s.else_case is not None:
            yield from iter_nodes(s.else_case, loops)
    elif isinstance(s, BlockRealize):
        yield s, loops


def blocks(func: PrimFunc) -> list[tuple[BlockRealize, tuple[For, ...]]]:
    """Every block realize in program order, with the loops above it."""
    return [(n, lp) for n, lp in iter_nodes(root_body(func)) if isinstance(n, BlockRealize)]


def find_block(func: PrimFunc, name: str) -> tuple[BlockRealize, tuple[For, ...]] | None:
    """The block called `name` and its loops, or None."""
    for br, loops in blocks(func):
        if br.block.name == name:
            return br, loops
    return None


def find_loop(func: PrimFunc, var_name: str) -> tuple[For, tuple[For, ...]] | None:
    """The loop over the variable called `var_name` and the loops above it, or None."""
    for n, loops in iter_nodes(root_body(func)):
        if isinstance(n, For) and n.var.name == var_name:
            return n, loops
    return None


def top_index(func: PrimFunc, node_pred: Callable[[Stmt], bool]) -> int:
    """Index of the root-level statement containing a node matching `node_pred` (-1 if none)."""
    for i, c in enumerate(children(root_body(func))):
        if node_pred(c) or any(node_pred(n) for n, _ in iter_nodes(c)):
            return i
    return -1


def map_stmt(s: Stmt, fn: Callable[[Stmt], Stmt | None]) -> Stmt:
    """Pre-order replacement: where `fn` returns a statement it replaces the node."""
    r = fn(s)
    if r is not None:
        return r
    if isinstance(s, SeqStmt):
        new = [map_stmt(c, fn) for c in s.stmts]
        return s if all(a is b for a, b in zip(new, s.stmts, strict=True)) else SeqStmt(tuple(new))
    if isinstance(s, For):
        body = map_stmt(s.body, fn)
        return s if body is s.body else dataclasses.replace(s, body=body)
    if isinstance(s, IfThenElse):
        t = map_stmt(s.then_case, fn)
        return s if t is s.then_case else dataclasses.replace(s, then_case=t)
    return s


EMPTY = SeqStmt(())


def cleanup(s: Stmt) -> Stmt:
    """Drop empty sequences and loops left empty by a removal; flatten nested sequences."""
    if isinstance(s, SeqStmt):
        kept = [
            c for c in (cleanup(x) for x in s.stmts) if not (isinstance(c, SeqStmt) and not c.stmts)
        ]
        if len(kept) == 1:
            return kept[0]
        flat: list[Stmt] = []
        for c in kept:
            flat.extend(c.stmts if isinstance(c, SeqStmt) else [c])
        return SeqStmt(tuple(flat))
    if isinstance(s, For):
        body = cleanup(s.body)
        if isinstance(body, SeqStmt) and not body.stmts:
            return EMPTY
        return s if body is s.body else dataclasses.replace(s, body=body)
    return s


def reads_of(block: Block) -> set[Buffer]:
    """Buffers a block reads."""
    return {r.buffer for r in block.reads}


def writes_of(block: Block) -> set[Buffer]:
    """Buffers a block writes."""
    return {w.buffer for w in block.writes}


def read_only_buffers(block: Block) -> list[Buffer]:
    """Buffers a block reads and does not write, in read order: what `cache_read`'s
    `read_buffer_index` counts."""
    written = writes_of(block)
    return [r.buffer for r in block.reads if r.buffer not in written]


def loop_vars_in(e: object) -> set[Var]:
    """Variables used in a node."""
    return {n for n in walk(e) if isinstance(n, Var)}


def reduce_loop_vars(br: BlockRealize) -> set[Var]:
    """Loop variables that drive a block's reduce iter vars."""
    out: set[Var] = set()
    for iv, value in zip(br.block.iter_vars, br.iter_values, strict=True):
        if iv.kind == "reduce":
            out |= loop_vars_in(value)
    return out


def spatial_loop_vars(br: BlockRealize) -> set[Var]:
    """Loop variables that drive a block's spatial iter vars."""
    out: set[Var] = set()
    for iv, value in zip(br.block.iter_vars, br.iter_values, strict=True):
        if iv.kind == "spatial":
            out |= loop_vars_in(value)
    return out


def loop_ranges(loops: tuple[For, ...] | list[For]) -> dict[Var, tuple[int, int]]:
    """Inclusive ranges of loops with constant extents."""
    return {lp.var: (0, int(lp.extent.value) - 1) for lp in loops if isinstance(lp.extent, Const)}


def all_names(func: PrimFunc) -> set[str]:
    """Every name used in a function (to make fresh ones)."""
    names = {v.name for v in func.shape_vars} | {b.name for b in func.params}
    names |= {b.name for b in func.body.block.alloc_buffers}
    for n in walk(func.body):
        if isinstance(n, Var):
            names.add(n.name)
        elif isinstance(n, Block):
            names.add(n.name)
            names |= {b.name for b in n.alloc_buffers}
        elif isinstance(n, BufferLoad | BufferStore):
            names.add(n.buffer.name)
    return names


def store_of(block: Block) -> BufferStore | None:
    """The block's body when it is a single store."""
    return block.body if isinstance(block.body, BufferStore) else None


def is_identity_write(block: Block, indices: tuple[Expr, ...]) -> bool:
    """True when `indices` are distinct spatial iter vars of `block` covering all of them."""
    spatial = [iv.var for iv in block.iter_vars if iv.kind == "spatial"]
    return (
        len(indices) == len(spatial)
        and set(indices) == set(spatial)
        and len(set(indices)) == len(indices)
    )


def reduction_update(store: BufferStore | None) -> tuple[str, Expr] | None:
    """(op, e) when `store` is `C[idx] = C[idx] op e` (or `e op C[idx]`) with op add, max or
    min and e not reading C; None otherwise. Integer sums may have been reordered by the
    simplifier, so both operand orders count."""
    from .expr import BinOp

    if store is None or not isinstance(store.value, BinOp):
        return None
    v = store.value
    if v.op not in ("add", "max", "min"):
        return None
    acc = BufferLoad(store.buffer, store.indices)
    for mine, other in ((v.a, v.b), (v.b, v.a)):
        if mine == acc and not any(
            isinstance(n, BufferLoad) and n.buffer == store.buffer for n in walk(other)
        ):
            return v.op, other
    return None


def block_replacer(name: str, new_block: Block) -> Callable[[Stmt], Stmt | None]:
    """A `map_stmt` callback putting `new_block` in the realize of the block called `name`."""

    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize) and s.block.name == name:
            return dataclasses.replace(s, block=new_block)
        return None

    return fix
