"""Schedule: transform a PrimFunc with primitives while recording a replayable Trace.

Handles are random variables (`RV`): a block handle names a block, a loop handle a loop
variable, an integer handle a sampled value. Every primitive is atomic: it computes a new
PrimFunc and either commits it together with its trace instruction or raises a ScheduleError
saying what and why, leaving the schedule exactly as it was.

The primitives live in modules by family, each declaring its trace traits
(`instruction_traits.primitive`); the methods here only run them atomically and record them:

    prim_queries      get_block, get_loops, get_producers, get_consumers
    prim_loops        split, fuse, reorder, parallel, vectorize, unroll, bind (+ race check)
    prim_annotate     annotate
    prim_caches       cache_read, cache_write, set_scope, storage_align, transform_layout
    prim_pad          pad_spatial
    prim_tensorize    tensorize
    prim_compute_at   compute_at, reverse_compute_at
    prim_inline       compute_inline, reverse_compute_inline
    prim_reduction    decompose_reduction, rfactor
    prim_mask         trim_masked, mask_into_producer
    prim_sampling     sample_perfect_tile, sample_categorical, sample_compute_location

Example (a 64x64x64 matmul block "C" with loops i, j, k):

    sch = Schedule(func)
    c = sch.get_block("C")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, 8])  # i_0 in range(8), i_1 in range(8), vi = i_0*8 + i_1
    sch.reorder(i0, j, i1)
    sch.parallel(i0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from . import (
    prim_annotate,
    prim_caches,
    prim_compute_at,
    prim_inline,
    prim_loops,
    prim_mask,
    prim_pad,
    prim_queries,
    prim_reduction,
    prim_sampling,
    prim_tensorize,
)
from .errors import ScheduleError
from .instruction_traits import traits_of
from .prim_sampling import ROOT_LOCATION
from .schedule_state import ScheduleState
from .stmt import LOOP_KINDS, PrimFunc
from .trace import RV, Instruction, Trace

M = TypeVar("M", bound=Callable[..., Any])


def _documented_by(prim: Callable[..., Any]) -> Callable[[M], M]:
    """Give the front method the docstring (IR before and after) of the primitive it runs."""

    def copy(method: M) -> M:
        method.__doc__ = prim.__doc__
        return method

    return copy


class Schedule:
    """A PrimFunc being transformed plus the trace of how (see module docstring)."""

    def __init__(self, func: PrimFunc, seed: int | None = None):
        if not isinstance(func, PrimFunc):
            raise TypeError(f"Schedule needs a PrimFunc, got {type(func).__name__}")
        self._orig = func
        self._state = ScheduleState(func, seed)
        self._insts: list[Instruction] = []
        self._decisions: dict[int, Any] = {}

    # ------------------------------------------------------------ state

    @property
    def func(self) -> PrimFunc:
        """The current PrimFunc."""
        return self._state.func

    @property
    def mod(self) -> PrimFunc:
        """The current PrimFunc (TVM's name for it)."""
        return self._state.func

    @property
    def original(self) -> PrimFunc:
        """The PrimFunc the schedule started from."""
        return self._orig

    @property
    def trace(self) -> Trace:
        """An immutable snapshot of the instructions and decisions so far."""
        return Trace(tuple(self._insts), dict(self._decisions))

    def copy(self) -> Schedule:
        """An independent schedule in the same state."""
        other = Schedule(self._orig)
        other._state = self._state.copy()
        other._insts = list(self._insts)
        other._decisions = dict(self._decisions)
        return other

    def get(self, rv: RV) -> Any:
        """What a handle refers to now: a Block, a For, or an int."""
        if rv.kind == "b":
            return self._state.block(rv)[0].block
        if rv.kind == "l":
            return self._state.loop(rv)[0]
        return self._state.value(rv)

    def show(self) -> str:
        """The current PrimFunc as text."""
        return self._state.func.script()

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        state = self._state
        saved = (state.func, dict(state.values), state.next_id, state.rng.getstate())
        n, decisions = len(self._insts), dict(self._decisions)
        try:
            yield
            if state.func is not saved[0]:
                prim_loops.check_races(state.func)
        except Exception:
            state.func, state.values, state.next_id, rng = saved
            state.rng.setstate(rng)
            del self._insts[n:]
            self._decisions = decisions
            raise

    def _apply(
        self,
        prim: Callable[..., Any],
        inputs: Sequence[Any],
        attrs: dict[str, Any] | None = None,
        decision: Any = None,
    ) -> Any:
        """Run the primitive `prim` atomically and record it with its declared traits."""
        traits = traits_of(prim.__name__)
        attrs = attrs or {}
        with self._atomic():
            if traits.sampling:
                out, decision = prim(self._state, *inputs, **attrs, decision=decision)
            else:
                out = prim(self._state, *inputs, **attrs)
            outputs = list(out) if traits.results == "list" else [] if out is None else [out]
            idx = len(self._insts)
            self._insts.append(
                Instruction(traits.name, tuple(inputs), tuple(attrs.items()), tuple(outputs))
            )
            if traits.sampling:
                self._decisions[idx] = decision
        return out

    # ------------------------------------------------------------ queries

    @_documented_by(prim_queries.get_block)
    def get_block(self, name: str) -> RV:
        return self._apply(prim_queries.get_block, [name])

    @_documented_by(prim_queries.get_loops)
    def get_loops(self, block: RV) -> list[RV]:
        return self._apply(prim_queries.get_loops, [block])

    @_documented_by(prim_queries.get_producers)
    def get_producers(self, block: RV) -> list[RV]:
        return self._apply(prim_queries.get_producers, [block])

    @_documented_by(prim_queries.get_consumers)
    def get_consumers(self, block: RV) -> list[RV]:
        return self._apply(prim_queries.get_consumers, [block])

    # ------------------------------------------------------------ loops

    @_documented_by(prim_loops.split)
    def split(self, loop: RV, factors: Sequence[int | RV | None]) -> list[RV]:
        return self._apply(prim_loops.split, [loop, list(factors)])

    @_documented_by(prim_loops.fuse)
    def fuse(self, *loops: RV) -> RV:
        return self._apply(prim_loops.fuse, loops)

    @_documented_by(prim_loops.reorder)
    def reorder(self, *loops: RV) -> None:
        self._apply(prim_loops.reorder, loops)

    @_documented_by(prim_loops.parallel)
    def parallel(self, loop: RV) -> None:
        self._apply(prim_loops.parallel, [loop])

    @_documented_by(prim_loops.vectorize)
    def vectorize(self, loop: RV) -> None:
        self._apply(prim_loops.vectorize, [loop])

    @_documented_by(prim_loops.unroll)
    def unroll(self, loop: RV) -> None:
        self._apply(prim_loops.unroll, [loop])

    @_documented_by(prim_loops.bind)
    def bind(self, loop: RV, thread: str) -> None:
        self._apply(prim_loops.bind, [loop, thread])

    # ------------------------------------------------------------ annotations

    @_documented_by(prim_annotate.annotate)
    def annotate(self, target: RV, key: str, value: Any) -> None:
        self._apply(prim_annotate.annotate, [target, key, value])

    # ------------------------------------------------------------ caches and layouts

    @_documented_by(prim_caches.cache_read)
    def cache_read(self, block: RV, read_buffer_index: int, storage_scope: str) -> RV:
        return self._apply(prim_caches.cache_read, [block, read_buffer_index, storage_scope])

    @_documented_by(prim_caches.cache_write)
    def cache_write(self, block: RV, write_buffer_index: int, storage_scope: str) -> RV:
        return self._apply(prim_caches.cache_write, [block, write_buffer_index, storage_scope])

    @_documented_by(prim_caches.set_scope)
    def set_scope(self, block: RV, write_buffer_index: int, storage_scope: str) -> None:
        self._apply(prim_caches.set_scope, [block, write_buffer_index, storage_scope])

    @_documented_by(prim_caches.storage_align)
    def storage_align(
        self, block: RV, write_buffer_index: int, axis: int, factor: int, offset: int
    ) -> None:
        self._apply(prim_caches.storage_align, [block, write_buffer_index, axis, factor, offset])

    @_documented_by(prim_caches.transform_layout)
    def transform_layout(
        self,
        block: RV,
        write_buffer_index: int,
        axis: int | None,
        factor: int | RV | None,
        order: Sequence[int],
    ) -> None:
        inputs = [block, write_buffer_index, axis, factor, list(order)]
        self._apply(prim_caches.transform_layout, inputs)

    @_documented_by(prim_pad.pad_spatial)
    def pad_spatial(self, block: RV, padding: Sequence[int]) -> list[RV]:
        return self._apply(prim_pad.pad_spatial, [block, list(padding)])

    # ------------------------------------------------------------ tensorize

    @_documented_by(prim_tensorize.tensorize)
    def tensorize(self, loop: RV, intrin: str) -> None:
        self._apply(prim_tensorize.tensorize, [loop, intrin])

    # ------------------------------------------------------------ compute location

    @_documented_by(prim_compute_at.compute_at)
    def compute_at(self, block: RV, loop: RV) -> None:
        self._apply(prim_compute_at.compute_at, [block, loop])

    @_documented_by(prim_compute_at.reverse_compute_at)
    def reverse_compute_at(self, block: RV, loop: RV) -> None:
        self._apply(prim_compute_at.reverse_compute_at, [block, loop])

    # ------------------------------------------------------------ inlining

    @_documented_by(prim_inline.compute_inline)
    def compute_inline(self, block: RV) -> None:
        self._apply(prim_inline.compute_inline, [block])

    @_documented_by(prim_inline.reverse_compute_inline)
    def reverse_compute_inline(self, block: RV) -> None:
        self._apply(prim_inline.reverse_compute_inline, [block])

    # ------------------------------------------------------------ reductions

    @_documented_by(prim_reduction.decompose_reduction)
    def decompose_reduction(self, block: RV, loop: RV) -> RV:
        return self._apply(prim_reduction.decompose_reduction, [block, loop])

    @_documented_by(prim_reduction.rfactor)
    def rfactor(self, loop: RV, factor_axis: int) -> RV:
        return self._apply(prim_reduction.rfactor, [loop, factor_axis])

    @_documented_by(prim_mask.trim_masked)
    def trim_masked(self, loop: RV) -> None:
        self._apply(prim_mask.trim_masked, [loop])

    @_documented_by(prim_mask.mask_into_producer)
    def mask_into_producer(self, block: RV) -> None:
        self._apply(prim_mask.mask_into_producer, [block])

    # ------------------------------------------------------------ sampling

    @_documented_by(prim_sampling.sample_perfect_tile)
    def sample_perfect_tile(
        self,
        loop: RV,
        n: int,
        max_innermost_factor: int = 16,
        decision: Sequence[int] | None = None,
    ) -> list[RV]:
        attrs = {"n": n, "max_innermost_factor": max_innermost_factor}
        return self._apply(prim_sampling.sample_perfect_tile, [loop], attrs, decision)

    @_documented_by(prim_sampling.sample_categorical)
    def sample_categorical(
        self, candidates: Sequence[int], probs: Sequence[float], decision: int | None = None
    ) -> RV:
        inputs = [list(candidates), list(probs)]
        return self._apply(prim_sampling.sample_categorical, inputs, None, decision)

    @_documented_by(prim_sampling.sample_compute_location)
    def sample_compute_location(self, block: RV, decision: int | None = None) -> RV:
        return self._apply(prim_sampling.sample_compute_location, [block], None, decision)


__all__ = ["LOOP_KINDS", "ROOT_LOCATION", "RV", "Schedule", "ScheduleError"]
