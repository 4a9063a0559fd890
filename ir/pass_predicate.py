"""Predication for CUDA: a store that every thread of a launched threadIdx axis would repeat
is made by thread 0 of that axis only.

A store to shared or global memory outside the loop bound to a launched threadIdx axis
becomes a `SingleThread` statement naming the axes; a vector loop's wide store (or cp.async
copy) records them in its `VectorAccess.store_threads`. Per-thread (local) storage is left
alone. With threadIdx.x launched over 32 threads:

    blockIdx.x loop:                        blockIdx.x loop:
      y[bx] = 0.0f                    ->      SingleThread((threadIdx.x,), y[bx] = 0.0f)
"""

from __future__ import annotations

import dataclasses

from .annotation_keys import TENSORIZE, VECTOR_ACCESS
from .gpu_launch import BLOCK_TAGS, launch_dims
from .pass_vectorize import VectorAccess
from .stmt import BufferStore, For, PrimFunc, SingleThread, Stmt
from .visit import descend


def predicate_stores(func: PrimFunc) -> PrimFunc:
    """Guard every shared or global store outside a launched threadIdx axis (see module)."""
    launch = launch_dims(func)

    def missing(bound: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(t for t in BLOCK_TAGS if launch.used(t) and t not in bound)

    def visit(s: Stmt, bound: tuple[str, ...]) -> Stmt:
        rebuilt = descend(s, bound, visit)
        if rebuilt is not None:
            return rebuilt
        if isinstance(s, BufferStore):
            threads = missing(bound)
            return SingleThread(threads, s) if threads and s.buffer.scope != "local" else s
        if not isinstance(s, For):
            return s
        ann = dict(s.annotations)
        if TENSORIZE in ann:
            return s
        if s.kind == "thread_binding" and s.thread != "vthread":
            return dataclasses.replace(s, body=visit(s.body, (*bound, s.thread or "")))
        access = ann.get(VECTOR_ACCESS)
        if isinstance(access, VectorAccess) and access.store is not None:
            marked = dataclasses.replace(access, store_threads=missing(bound))
            kept = tuple((k, v) for k, v in s.annotations if k != VECTOR_ACCESS)
            return dataclasses.replace(s, annotations=(*kept, (VECTOR_ACCESS, marked)))
        return dataclasses.replace(s, body=visit(s.body, bound))

    return dataclasses.replace(func, body=visit(func.body, ()))
