"""Runs a scheduled CUDA PrimFunc's lowered loops on the CPU, every GPU thread a numpy lane.

What a schedule and its lowering mean, checked without a GPU. The kernel's launch (the
largest extent bound to each of blockIdx, clusterIdx and threadIdx) becomes the axes of
numpy arrays, and every statement runs for all the threads at once (lockstep), so a barrier
is always met and a cross-thread reduction (`ThreadAllReduce`) sees every thread's value. As
on the GPU, every thread runs the whole body: a loop bound to a thread axis names that
thread's index and masks the threads beyond its extent. Memory is what the thread sees:
`local` buffers one per thread wherever they are allocated, `shared` one per block,
`shared.cluster` one per cluster, parameters one. Freshly allocated floats are NaN, so a
read of memory no thread wrote shows in the result, and a read or write outside a buffer by
a thread that runs it is an `InterpretError` naming the buffer (a GPU would read garbage or
fault).

    for blockIdx_x in range(5):            lanes: blockIdx.x = arange(5)
      for threadIdx_x in range(256):       lanes: (5, 256)
        red[0] = max(red[0], x[..])        one numpy step for 1280 threads
        red[0] = allreduce_max(red[0])     np.max over the threadIdx.x axis

Tensor-core steps run as the loops they replace (what `tensorize` checked they compute),
their fragments one per warp (every lane but threadIdx.x's), their rows and columns along
numpy axes. Not covered: the CUDA renderer's own work (the intrinsics' text, wide loads,
cp.async, address swizzles), timing. The GPU tests (`pytest -m gpu`)
remain the check of the generated code; this one runs in CI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .annotation_keys import TENSORIZE
from .dtypes import bf16_to_f32, f32_to_bf16, from_float32, to_float32
from .errors import IRError
from .expr import (
    REDUCE_IDENTITY,
    BinOp,
    Buffer,
    BufferLoad,
    Call,
    Cast,
    Const,
    Expr,
    Select,
    Var,
)
from .stmt import (
    Allocate,
    BufferStore,
    For,
    IfThenElse,
    PipelineSync,
    PrimFunc,
    SeqStmt,
    SingleThread,
    Stmt,
    SyncThreads,
    ThreadAllReduce,
)
from .target_passes import lower_for_target
from .visit import free_vars, walk

# one numpy axis per thread tag, outermost first
AXES = (
    "blockIdx.z",
    "blockIdx.y",
    "blockIdx.x",
    "clusterIdx.x",
    "threadIdx.z",
    "threadIdx.y",
    "threadIdx.x",
)
_THREADS = len(AXES)
_RANK = _THREADS + 3  # and three axes for loops whose iterations are independent
_RANK_AXIS = AXES.index("clusterIdx.x")
_FRAGMENT_SCOPES = ("wmma.", "mma.", "wgmma.")
_NP = {
    "float16": np.float16,
    "float32": np.float32,
    "bfloat16": np.float32,  # values rounded to bfloat16, held in float32
    "float64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
}
_REDUCE = {"add": np.sum, "max": np.max, "min": np.min}


class InterpretError(IRError):
    """The lowered function does something the interpreter cannot run or a GPU must not do."""


def interpret(
    func: PrimFunc, inputs: Sequence[np.ndarray], dims: Mapping[str, int] | None = None
) -> list[np.ndarray]:
    """Run scheduled `func` on `inputs` (its input buffers in order; symbolic dims from
    `dims` by name) and return its outputs; bfloat16 arrays are uint16 bit patterns, as
    `ops.make_inputs` makes them."""
    return interpret_lowered(lower_for_target(func, "cuda"), inputs, dims)


def interpret_lowered(
    low: PrimFunc, inputs: Sequence[np.ndarray], dims: Mapping[str, int] | None = None
) -> list[np.ndarray]:
    """`interpret` of a PrimFunc already lowered (`lower`, or `lower_for_target` for cuda,
    whose single-thread stores run on thread 0 alone)."""
    run = _Run({k: int(v) for k, v in (dims or {}).items()})
    ins, outs = low.params[: low.num_inputs], low.params[low.num_inputs :]
    if len(inputs) != len(ins):
        raise InterpretError(f"{low.name} takes {len(ins)} inputs, got {len(inputs)}")
    for buf, arr in zip(ins, inputs, strict=True):
        shape = run.shape(buf)
        if tuple(np.shape(arr)) != shape:
            raise InterpretError(f"input {buf.name} has shape {np.shape(arr)}, expected {shape}")
        run.bind_param(buf, np.asarray(arr))
    for buf in outs:
        run.bind_param(buf, None)
    run.launch_from(low.body)
    mask = np.ones([run.launch.get(a, 1) for a in range(_RANK)], dtype=bool)
    run.stmt(low.body, mask)
    return [run.result(buf) for buf in outs]


def _instance_axes(scope: str) -> tuple[int, ...]:
    """The thread axes along which threads have their own instance of a buffer of `scope`."""
    if scope == "global":
        return ()
    if scope.startswith(_FRAGMENT_SCOPES):  # a warp's (warpgroup's) lanes hold it together
        return tuple(a for a in range(_THREADS) if a != AXES.index("threadIdx.x"))
    if scope.startswith("shared.cluster"):
        return tuple(range(AXES.index("blockIdx.x") + 1))
    if scope.startswith("shared"):
        return tuple(range(_RANK_AXIS + 1))
    return tuple(range(_THREADS))


def _written_apart(s: For) -> set[Var]:
    """The loops of the perfect nest at `s` whose variables index the nest's one store:
    their iterations write different elements (a tensor-core step's rows and columns)."""
    loops, body = [], s
    while isinstance(body, For):
        loops.append(body.var)
        body = body.body
    while isinstance(body, IfThenElse) and body.else_case is None:
        body = body.then_case
    if not isinstance(body, BufferStore):
        return set()
    used = {v for i in body.indices for v in free_vars(i)}
    return {v for v in loops if v in used}


def _axis_arange(axis: int, n: int) -> np.ndarray:
    shape = [1] * _RANK
    shape[axis] = n
    return np.arange(n, dtype=np.int64).reshape(shape)


def _round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(np.isnan(x), np.float32(np.nan), bf16_to_f32(f32_to_bf16(x)))


def _as(dtype: str, x: Any) -> np.ndarray:
    """`x` converted to `dtype` the way a C cast does (floats to ints truncate)."""
    arr = np.asarray(x)
    if dtype == "bfloat16":
        return _round_bf16(arr.astype(np.float32))
    target = _NP.get(dtype)
    if target is None:
        raise InterpretError(f"no numpy type for dtype {dtype}")
    if np.issubdtype(target, np.integer) and np.issubdtype(arr.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            return np.trunc(np.nan_to_num(arr)).astype(target)
    return arr.astype(target)


class _Storage:
    """A buffer's memory: one flat array per instance, instances along the thread axes whose
    threads each have their own (see the module docstring)."""

    def __init__(self, buf: Buffer, data: np.ndarray):
        self.buf = buf
        self.data = data  # shape: (launch extent or 1 per axis) + (size,)

    def lanes(self) -> list[Any]:
        return [
            _axis_arange(a, self.data.shape[a]) if self.data.shape[a] > 1 else 0
            for a in range(_RANK)
        ]


class _Run:
    def __init__(self, dims: dict[str, int]):
        self.dims = dims
        self.env: dict[Var, Any] = {}
        self.mem: dict[Buffer, _Storage] = {}
        self.launch: dict[int, int] = {}  # thread axis -> launch extent
        self.free = list(range(_THREADS, _RANK))  # axes for independent iterations
        self.vector: set[Var] = set()  # loops to run along them

    # ---------------------------------------------------------------- buffers

    def shape(self, buf: Buffer) -> tuple[int, ...]:
        return tuple(self._int(d) for d in buf.shape)

    def _int(self, e: Expr) -> int:
        for v in free_vars(e):
            if v not in self.env:
                if v.name not in self.dims:
                    raise InterpretError(f"symbolic dim {v.name} needs a value (dims={{...}})")
                self.env[v] = self.dims[v.name]
        value = self.expr(e, np.ones((1,) * _RANK, dtype=bool))
        return int(np.asarray(value).reshape(-1)[0])

    def bind_param(self, buf: Buffer, arr: np.ndarray | None) -> None:
        size = math.prod(self.shape(buf))
        if arr is None:
            data = self._fresh(buf.dtype, size)
        elif buf.dtype == "bfloat16":
            data = to_float32(arr.reshape(-1), "bfloat16")
        else:
            data = _as(buf.dtype, arr.reshape(-1)).copy()
        self.mem[buf] = _Storage(buf, data.reshape((1,) * _RANK + (size,)))

    def result(self, buf: Buffer) -> np.ndarray:
        data = self.mem[buf].data.reshape(self.shape(buf))
        return from_float32(data, "bfloat16") if buf.dtype == "bfloat16" else data

    @staticmethod
    def _fresh(dtype: str, size: int) -> np.ndarray:
        target = _NP.get(dtype)
        if target is None:
            raise InterpretError(f"no numpy type for dtype {dtype}")
        if np.issubdtype(target, np.floating):
            return np.full(size, np.nan, dtype=target)
        return np.zeros(size, dtype=target)

    def _flat(self, st: _Storage, indices: Sequence[Expr], mask: np.ndarray) -> Any:
        flat: Any = 0
        for idx, dim in zip(indices, st.buf.shape, strict=True):
            flat = flat * self._int(dim) + np.asarray(self.expr(idx, mask), dtype=np.int64)
        return flat

    def _checked(self, st: _Storage, flat: Any, mask: np.ndarray, what: str) -> Any:
        size = st.data.shape[-1]
        flat = np.asarray(flat, dtype=np.int64)
        bad = mask & ((flat < 0) | (flat >= size))
        if np.any(bad):
            at = int(np.broadcast_to(flat, bad.shape)[bad].reshape(-1)[0])
            raise InterpretError(f"{what} {st.buf.name} at flat index {at}, outside its {size}")
        return np.clip(flat, 0, size - 1)

    def load(self, e: BufferLoad, mask: np.ndarray) -> Any:
        st = self._storage(e.buffer)
        flat = self._checked(st, self._flat(st, e.indices, mask), mask, "read of")
        return st.data[(*st.lanes(), flat)]

    def store(self, s: BufferStore, mask: np.ndarray) -> None:
        st = self._storage(s.buffer)
        flat = self._checked(st, self._flat(st, s.indices, mask), mask, "write to")
        value = _as(s.buffer.dtype, self.expr(s.value, mask))
        lanes = st.lanes()
        full = np.broadcast_shapes(
            mask.shape, np.shape(flat), np.shape(value), *map(np.shape, lanes)
        )
        m = np.broadcast_to(mask, full)
        if not m.any():
            return
        where = tuple(np.broadcast_to(x, full)[m] for x in (*lanes, flat))
        st.data[where] = np.broadcast_to(value, full)[m]

    def _storage(self, buf: Buffer) -> _Storage:
        st = self.mem.get(buf)
        if st is None:
            raise InterpretError(f"buffer {buf.name} is used outside its allocation")
        return st

    # ---------------------------------------------------------------- statements

    def stmt(self, s: Stmt, mask: np.ndarray) -> None:
        if isinstance(s, SeqStmt):
            for c in s.stmts:
                self.stmt(c, mask)
        elif isinstance(s, BufferStore):
            self.store(s, mask)
        elif isinstance(s, For):
            self._for(s, mask)
        elif isinstance(s, IfThenElse):
            cond = np.asarray(self.expr(s.cond, mask), dtype=bool)
            self.stmt(s.then_case, mask & cond)
            if s.else_case is not None:
                self.stmt(s.else_case, mask & ~cond)
        elif isinstance(s, Allocate):
            self._allocate(s, mask)
        elif isinstance(s, ThreadAllReduce):
            self._allreduce(s, mask)
        elif isinstance(s, SingleThread):
            first = np.ones_like(mask)
            for tag in s.threads:
                axis = AXES.index(tag)
                first = first & (_axis_arange(axis, self.launch.get(axis, 1)) == 0)
            self.stmt(s.body, mask & first)
        elif isinstance(s, SyncThreads | PipelineSync):
            return  # every thread is at every statement together
        else:
            raise InterpretError(f"cannot interpret {type(s).__name__}")

    def launch_from(self, body: Stmt) -> None:
        """The launch: each thread axis's largest bound extent."""
        for n in walk(body):
            if isinstance(n, For) and n.kind == "thread_binding" and n.thread in AXES:
                axis = AXES.index(n.thread)
                self.launch[axis] = max(self.launch.get(axis, 1), self._int(n.extent))

    def _for(self, s: For, mask: np.ndarray) -> None:
        if s.kind == "thread_binding" and s.thread in AXES:
            axis = AXES.index(s.thread)
            if s.var in self.env:
                raise InterpretError(f"{s.thread} is bound twice in one nest")
            index = _axis_arange(axis, self.launch[axis])
            self.env[s.var] = index
            try:
                self.stmt(s.body, mask & (index < self._int(s.extent)))
            finally:
                del self.env[s.var]
            return
        if isinstance(s.extent, Const) and self.free:
            if TENSORIZE in dict(s.annotations):  # one tensor-core step: its spatial loops
                self.vector |= _written_apart(s)  # run as numpy axes, its k loop serially
            if s.var in self.vector or (s.kind == "vectorized" and s.var in _written_apart(s)):
                self._vector_loop(s, mask)
                return
        extent = np.asarray(self.expr(s.extent, mask), dtype=np.int64)
        full = np.broadcast_shapes(mask.shape, extent.shape)
        top = int(np.broadcast_to(extent, full)[np.broadcast_to(mask, full)].max(initial=0))
        for i in range(top):
            self.env[s.var] = i
            self.stmt(s.body, mask & (i < extent))
        self.env.pop(s.var, None)

    def _vector_loop(self, s: For, mask: np.ndarray) -> None:
        """All iterations of `s` at once along a free numpy axis (they write apart)."""
        axis = self.free.pop()
        self.env[s.var] = _axis_arange(axis, int(s.extent.value))  # type: ignore[attr-defined]
        try:
            self.stmt(s.body, mask)
        finally:
            del self.env[s.var]
            self.vector.discard(s.var)
            self.free.append(axis)

    def _allocate(self, s: Allocate, mask: np.ndarray) -> None:
        buf = s.buffer
        size = math.prod(self.shape(buf))
        lanes = [
            self.launch.get(a, 1) if a in _instance_axes(buf.scope) else 1 for a in range(_RANK)
        ]
        data = np.broadcast_to(self._fresh(buf.dtype, size), (*lanes, size)).copy()
        saved = self.mem.get(buf)
        self.mem[buf] = _Storage(buf, data)
        try:
            self.stmt(s.body, mask)
        finally:
            if saved is None:
                del self.mem[buf]
            else:
                self.mem[buf] = saved

    def _allreduce(self, s: ThreadAllReduce, mask: np.ndarray) -> None:
        """Every element of each thread's acc becomes the reduction over its group of
        `extent` threads along the axis of `s.thread` (threads that do not run it add the
        identity)."""
        if s.thread not in AXES:
            raise InterpretError(f"all-reduce over {s.thread!r}")
        axis = AXES.index(s.thread)
        st = self._storage(s.buffer)
        n = self.launch.get(axis, 1)
        if n % s.extent:
            raise InterpretError(f"all-reduce over {s.extent} of {n} threads of {s.thread}")
        size = st.data.shape[-1]
        full = np.broadcast_shapes(st.data.shape[:-1], mask.shape)
        m = np.broadcast_to(mask, full)
        data = np.broadcast_to(st.data, (*full, size)).copy()
        for e in range(size):
            vals = np.where(m, data[..., e].astype(np.float64), REDUCE_IDENTITY[s.op])
            grouped = vals.reshape(*full[:axis], n // s.extent, s.extent, *full[axis + 1 :])
            red = _REDUCE[s.op](grouped, axis=axis + 1, keepdims=True)
            total = np.broadcast_to(red, grouped.shape).reshape(full)
            data[..., e][m] = total[m]
        st.data = _as(s.buffer.dtype, data)

    # ---------------------------------------------------------------- expressions

    def expr(self, e: Expr, mask: np.ndarray) -> Any:
        if isinstance(e, Const):
            return e.value
        if isinstance(e, Var):
            if e in self.env:
                return self.env[e]
            if e.name in self.dims:
                return self.dims[e.name]
            raise InterpretError(f"variable {e.name} has no value")
        if isinstance(e, BufferLoad):
            return self.load(e, mask)
        if isinstance(e, Cast):
            return _as(e.dtype, self.expr(e.value, mask))
        if isinstance(e, Select):
            cond = np.asarray(self.expr(e.cond, mask), dtype=bool)
            a = self.expr(e.true_value, mask & cond)
            b = self.expr(e.false_value, mask & ~cond)
            return _as(e.dtype, np.where(cond, a, b))
        if isinstance(e, Call):
            return self._call(e, mask)
        if isinstance(e, BinOp):
            return self._binop(e, mask)
        raise InterpretError(f"cannot interpret expression {type(e).__name__}")

    def _call(self, e: Call, mask: np.ndarray) -> Any:
        x = np.asarray(self.expr(e.args[0], mask))
        if e.op == "not":
            return ~x.astype(bool)
        f = np.asarray(x, dtype=np.float32)
        with np.errstate(all="ignore"):
            if e.op == "sigmoid":
                out = 1.0 / (1.0 + np.exp(-f))
            elif e.op == "rsqrt":
                out = 1.0 / np.sqrt(f)
            elif e.op == "erf":
                from math import erf

                out = np.vectorize(erf, otypes=[np.float64])(f)
            else:
                out = getattr(np, {"abs": "abs"}.get(e.op, e.op))(f)
        return _as(e.dtype, out)

    def _binop(self, e: BinOp, mask: np.ndarray) -> Any:
        op = e.op
        if op in ("and", "or"):  # the right side runs only where the left does not decide
            a = np.asarray(self.expr(e.a, mask), dtype=bool)
            b = np.asarray(self.expr(e.b, mask & (a if op == "and" else ~a)), dtype=bool)
            return (a & b) if op == "and" else (a | b)
        a, b = self.expr(e.a, mask), self.expr(e.b, mask)
        is_int = e.a.dtype not in ("float16", "float32", "bfloat16", "float64")
        if not is_int:
            a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        with np.errstate(all="ignore"):
            division = _DIVISIONS.get(op)
            out = division(a, b, is_int) if division else _UFUNCS[op](a, b)
        if op in ("lt", "le", "gt", "ge", "eq", "ne"):
            return out
        return _as(e.dtype, out)


def _div(a: Any, b: Any, is_int: bool) -> Any:
    if not is_int:
        return a / b
    b = np.where(np.asarray(b) == 0, 1, b)
    q = np.abs(a) // np.abs(b)
    return np.where((np.asarray(a) < 0) != (np.asarray(b) < 0), -q, q)  # C: toward zero


def _floordiv(a: Any, b: Any, is_int: bool) -> Any:
    return np.floor_divide(a, np.where(np.asarray(b) == 0, 1, b)) if is_int else np.floor(a / b)


def _floormod(a: Any, b: Any, is_int: bool) -> Any:
    return np.mod(a, np.where(np.asarray(b) == 0, 1, b)) if is_int else np.mod(a, b)


_UFUNCS = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "min": np.minimum,
    "max": np.maximum,
    "shr": np.right_shift,
    "shl": np.left_shift,
    "bitand": np.bitwise_and,
    "bitor": np.bitwise_or,
    "lt": np.less,
    "le": np.less_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "eq": np.equal,
    "ne": np.not_equal,
}
_DIVISIONS = {"div": _div, "floordiv": _floordiv, "floormod": _floormod}  # int or float
