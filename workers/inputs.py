"""Inputs and references, drawn once per workload inside a runner's worker process.

A kernel's buffers come in call order: the op's inputs first, then its outputs; int64 scalars
follow and take the values of the problem's dims of the same name. When the working set is
small enough for the cache to hold it, several input sets are drawn and the timing loop
rotates through them, so a memory-bound kernel is timed against memory, not cache.
"""

from __future__ import annotations

import importlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunefleet.ir.codegen import KernelArg
from tunefleet.workers.checking import poison, reference_scale, storage_dtype, to_storage
from tunefleet.workers.launch import LaunchExprError, evaluate
from tunefleet.workers.results import MeasureConfig, Problem


class ProblemError(ValueError):
    """The problem and the kernel's arguments do not fit together (a run_error, not a crash)."""


@dataclass(frozen=True)
class WorkloadData:
    """Host-side buffers for every input set, plus the reference outputs of set 0."""

    sets: tuple[tuple[np.ndarray, ...], ...]  # per set: buffers in call order
    scalars: tuple[int, ...]
    n_inputs: int
    buffer_dtypes: tuple[str, ...]
    reference: tuple[np.ndarray, ...]  # one per output: float32/float64, or int64
    reference_scales: tuple[float, ...]  # max |ref| per output, computed once

    @property
    def set_bytes(self) -> int:
        return sum(b.nbytes for b in self.sets[0])

    def outputs(self, index: int) -> tuple[np.ndarray, ...]:
        return self.sets[index][self.n_inputs :]

    def poison_outputs(self, index: int) -> None:
        for buf, dtype in zip(
            self.outputs(index), self.buffer_dtypes[self.n_inputs :], strict=True
        ):
            poison(buf, dtype)


def resolve_op(name: str) -> Any:
    """The op object for a problem: 'module:attribute', or a name in `tunefleet.ir.ops`."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise ProblemError(f"cannot import op {name!r}: {err}") from err
    try:
        from tunefleet.ir.ops import get_op
    except ImportError as err:
        raise ProblemError(f"the op library is unavailable: {err}") from err
    try:
        return get_op(name)
    except (KeyError, ValueError) as err:
        raise ProblemError(f"unknown op {name!r}: {err}") from err


ALIGN_BYTES = 64  # a cache line and an AVX-512 vector: no vector access of a kernel splits lines


def aligned(array: np.ndarray, align: int = ALIGN_BYTES) -> np.ndarray:
    """A C-contiguous copy of `array` whose data starts on an `align`-byte boundary.

    numpy places large arrays 16 bytes past a page boundary, and a kernel vectorized over
    such rows runs up to 1.5x slower (dense 1024^3 on AVX-512: 25 ms against 16.5 ms), so a
    measured time would depend on the allocator; TVM aligns its tensors the same way.
    """
    out = aligned_empty(array.shape, array.dtype, align)
    out[...] = array
    return out


def aligned_empty(shape: tuple[int, ...], dtype: Any, align: int = ALIGN_BYTES) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def input_set_count(set_bytes: int, cache_bytes: int, config: MeasureConfig) -> int:
    """How many input sets to rotate so together they exceed twice the cache (at most max)."""
    if not config.rotate_inputs or set_bytes <= 0:
        return 1
    return max(1, min(config.max_input_sets, math.ceil(2 * cache_bytes / set_bytes)))


def prepare(
    problem: Problem, args: Sequence[KernelArg], config: MeasureConfig, cache_bytes: int
) -> WorkloadData:
    """Draw inputs, compute the reference and allocate poisoned outputs for each input set."""
    op = resolve_op(problem.op)
    dims = problem.dim_values
    attrs = problem.attr_values
    buffers = [a for a in args if a.kind == "buffer"]
    scalars = []
    for arg in args:
        if arg.kind == "scalar":
            if arg.name not in dims:
                raise ProblemError(f"kernel scalar {arg.name!r} is not a dim of {problem.key}")
            scalars.append(int(dims[arg.name]))

    def draw(seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng(seed)
        drawn = op.make_inputs(dims, problem.dtype, rng, **attrs)
        return list(drawn) if isinstance(drawn, list | tuple) else [drawn]

    first = draw(config.seed)
    n_inputs = len(first)
    if n_inputs > len(buffers):
        raise ProblemError(
            f"{problem.key} has {n_inputs} inputs but the kernel takes {len(buffers)} buffers"
        )
    in_dtypes = [a.dtype for a in buffers[:n_inputs]]
    stored = [aligned(to_storage(x, d)) for x, d in zip(first, in_dtypes, strict=True)]
    ref = op.reference(*stored, **attrs)  # the op decodes storage forms (bf16 bits) itself
    refs = tuple(np.asarray(r) for r in (ref if isinstance(ref, list | tuple) else [ref]))
    out_args = buffers[n_inputs:]
    if len(refs) != len(out_args):
        raise ProblemError(
            f"{problem.key} has {len(refs)} outputs but the kernel has {len(out_args)} "
            "output buffers"
        )
    for arg, array in zip(buffers, [*first, *refs], strict=True):
        _check_size(arg, np.shape(array), dims, problem)
    outs = [
        aligned_empty(r.shape, storage_dtype(a.dtype)) for r, a in zip(refs, out_args, strict=True)
    ]
    set_bytes = sum(s.nbytes for s in stored) + sum(o.nbytes for o in outs)
    count = input_set_count(set_bytes, cache_bytes, config)
    sets = [(*stored, *outs)]
    for index in range(1, count):
        more = [
            aligned(to_storage(x, d))
            for x, d in zip(draw(config.seed + index), in_dtypes, strict=True)
        ]
        sets.append((*more, *(aligned_empty(o.shape, o.dtype) for o in outs)))
    references = tuple(r if r.dtype in (np.float32, np.float64) else _widen(r) for r in refs)
    data = WorkloadData(
        sets=tuple(tuple(s) for s in sets),
        scalars=tuple(scalars),
        n_inputs=n_inputs,
        buffer_dtypes=tuple(a.dtype for a in buffers),
        reference=references,
        reference_scales=tuple(reference_scale(r) for r in references),
    )
    for index in range(count):
        data.poison_outputs(index)
    return data


def _widen(array: np.ndarray) -> np.ndarray:
    """A reference in float64 (other floats) or int64 (integers) for comparison."""
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64)
    return array.astype(np.int64)


def _check_size(
    arg: KernelArg, shape: tuple[int, ...], dims: dict[str, int], problem: Problem
) -> None:
    """Refuse a problem whose arrays have another element count than the kernel's buffer."""
    if not arg.shape:
        return
    try:
        expected = math.prod(evaluate(d, dims) for d in arg.shape)
    except LaunchExprError as err:
        raise ProblemError(f"buffer {arg.name!r} of the kernel: {err}") from err
    if expected != math.prod(shape):
        raise ProblemError(
            f"buffer {arg.name!r} holds {expected} elements but {problem.key} gives "
            f"{math.prod(shape)}"
        )


class WorkloadCache:
    """The last few workloads' data, so candidates of one workload reuse the same inputs."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def signature(problem: Problem, args: Sequence[KernelArg], config: MeasureConfig) -> tuple:
    """What the drawn data depends on: the problem, the buffer dtypes and the draw settings."""
    return (
        problem,
        tuple((a.kind, a.dtype, a.name if a.kind == "scalar" else "") for a in args),
        config.seed,
        config.rotate_inputs,
        config.max_input_sets,
    )
