"""Barrier placement for CUDA: explicit `SyncThreads` statements where threads of a block hand
shared memory to each other.

Outside the loops bound to threadIdx axes (block level), a barrier separates a statement that
writes shared memory from the next one that touches shared memory, and ends each iteration of
a block-level loop whose body writes and reads shared memory, so a tile is not overwritten
while other threads still read it. `shared.cluster` buffers (shared memory that the other
blocks of a thread-block cluster read) get the cluster's barrier instead. A
software-pipelined loop's waits (PipelineSync) are its only barriers; tensorized nests,
vector loops and the loops inside thread-bound ones get none:

    x_shared[...] = x[...]         (copy nest)         x_shared[...] = x[...]
    y[...] = x_shared[...] * 2     (compute nest)  ->  SyncThreads()
                                                       y[...] = x_shared[...] * 2
"""

from __future__ import annotations

import dataclasses

from .annotation_keys import (
    HOISTED_LOADS,
    PIPELINE_STAGES,
    TENSORIZE,
    VECTOR_ACCESS,
    WGMMA_BATCH,
)
from .expr import BufferLoad
from .gpu_launch import BLOCK_TAGS
from .stmt import Allocate, BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt, SyncThreads
from .visit import walk

CLUSTER_SCOPE = "shared.cluster"  # each block's shared memory, read by the whole cluster
SHARED_SCOPES = ("shared", CLUSTER_SCOPE)


def shared_names(
    s: Stmt, stores: bool = True, loads: bool = True, scopes: tuple[str, ...] = SHARED_SCOPES
) -> set[str]:
    """Names of the buffers of `scopes` (shared memory) `s` stores to (`stores`) or loads
    from (`loads`)."""
    out: set[str] = set()
    for n in walk(s):
        if isinstance(n, BufferStore) and n.buffer.scope in scopes and stores:
            out.add(n.buffer.name)
        elif isinstance(n, BufferLoad) and n.buffer.scope in scopes and loads:
            out.add(n.buffer.name)
    return out


def cluster_names(s: Stmt, stores: bool = True, loads: bool = True) -> set[str]:
    """Names of the `shared.cluster` buffers `s` stores to or loads from."""
    return shared_names(s, stores, loads, (CLUSTER_SCOPE,))


def _pending_after(s: Stmt, dirty: bool, cluster_dirty: bool) -> tuple[bool, bool]:
    """Whether shared (and cluster) memory written before or in `s` awaits a barrier after
    it, in program order: a store makes it pending, a barrier inside `s` clears it (not one
    that only a branch of an `if` reaches)."""
    branch = {id(b) for n in walk(s) if isinstance(n, IfThenElse) for b in walk(n)}
    for n in walk(s):
        if isinstance(n, SyncThreads) and id(n) not in branch:
            dirty = False
            cluster_dirty = cluster_dirty and not n.cluster
        elif isinstance(n, BufferStore) and n.buffer.scope in SHARED_SCOPES:
            dirty = True
            cluster_dirty = cluster_dirty or n.buffer.scope == CLUSTER_SCOPE
    return dirty, cluster_dirty


def insert_thread_syncs(func: PrimFunc) -> PrimFunc:
    """Insert the block-level barriers described in the module docstring."""

    def seq(s: SeqStmt, in_threads: bool, no_auto: bool) -> Stmt:
        if in_threads:
            return SeqStmt(tuple(visit(c, in_threads, no_auto) for c in s.stmts))
        out: list[Stmt] = []
        dirty = cluster_dirty = False
        for c in s.stmts:
            if cluster_dirty and not no_auto and cluster_names(c):
                out.append(SyncThreads(cluster=True))  # a block barrier too
                dirty = cluster_dirty = False
            elif dirty and not no_auto and shared_names(c):
                out.append(SyncThreads())
                dirty = False
            out.append(visit(c, in_threads, no_auto))
            dirty, cluster_dirty = _pending_after(out[-1], dirty, cluster_dirty)
        return SeqStmt(tuple(out))

    def loop(s: For, in_threads: bool, no_auto: bool) -> Stmt:
        ann = dict(s.annotations)
        if TENSORIZE in ann or VECTOR_ACCESS in ann:
            return s
        if s.kind == "thread_binding" and s.thread != "vthread":
            inner = in_threads or s.thread in BLOCK_TAGS
            return dataclasses.replace(s, body=visit(s.body, inner, no_auto))
        if PIPELINE_STAGES in ann and not in_threads:
            return dataclasses.replace(s, body=visit(s.body, in_threads, True))
        body = visit(s.body, in_threads, no_auto)
        if HOISTED_LOADS in ann and WGMMA_BATCH not in ann:
            return dataclasses.replace(s, body=body)
        if (
            not in_threads
            and shared_names(s.body, loads=False)
            and shared_names(s.body, stores=False)
        ):
            writes, reads = cluster_names(s.body, loads=False), cluster_names(s.body, stores=False)
            body = SeqStmt((body, SyncThreads(bool(writes and reads))))
        return dataclasses.replace(s, body=body)

    def visit(s: Stmt, in_threads: bool, no_auto: bool) -> Stmt:
        if isinstance(s, SeqStmt):
            return seq(s, in_threads, no_auto)
        if isinstance(s, IfThenElse):
            then = visit(s.then_case, in_threads, no_auto)
            other = None if s.else_case is None else visit(s.else_case, in_threads, no_auto)
            return dataclasses.replace(s, then_case=then, else_case=other)
        if isinstance(s, Allocate):
            return dataclasses.replace(s, body=visit(s.body, in_threads, no_auto))
        if isinstance(s, For):
            return loop(s, in_threads, no_auto)
        return s

    return dataclasses.replace(func, body=visit(func.body, False, False))
