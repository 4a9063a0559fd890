"""Features of a lowered program for the cost model: one fixed-length float vector per schedule.

Every store statement of the lowered loop nest gets a vector: its loop nest (depth, iteration
count, innermost extent), arithmetic by kind (float ops and intrinsic calls times iterations),
the loop annotations around it (vector width, unrolled extent, parallel extent, thread and
block extents), and for the stored buffer and the two largest loaded buffers: bytes, unique
bytes, reuse (iterations per unique element) and the stride along the innermost loop. The
program vector is the three heaviest stores' vectors followed by program totals (allocated
local bytes, stores, parallel regions). Values are log2(1 + x) so the scales stay comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from tunefleet.ir.dtypes import DTypeError
from tunefleet.ir.expr import BinOp, Buffer, BufferLoad, Call, Cast, Const, Expr, Select, Var
from tunefleet.ir.lower import lower
from tunefleet.ir.stmt import Allocate, BufferStore, For, IfThenElse, PrimFunc, SeqStmt, Stmt
from tunefleet.ir.visit import walk

STORE_FEATURES = 24
TOP_STORES = 3
GLOBAL_FEATURES = 4
FEATURE_COUNT = STORE_FEATURES * TOP_STORES + GLOBAL_FEATURES

_FLOAT_OPS = {"add", "sub", "mul", "div", "min", "max"}
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "int32": 4, "uint32": 4}


@dataclass(frozen=True)
class _Loop:
    var: Var
    extent: int
    kind: str
    thread: str | None


def _lg(x: float) -> float:
    return math.log2(1.0 + max(0.0, float(x)))


def _const_int(e: Expr, default: int = 1) -> int:
    return int(e.value) if isinstance(e, Const) else default


def _eval(e: Expr, env: dict[Var, int]) -> int | None:
    """Integer value of an index expression (loop vars from env, other vars 0)."""
    if isinstance(e, Const):
        return int(e.value) if isinstance(e.value, int | bool) else None
    if isinstance(e, Var):
        return env.get(e, 0)
    if isinstance(e, Cast):
        return _eval(e.value, env)
    if isinstance(e, BinOp):
        a, b = _eval(e.a, env), _eval(e.b, env)
        if a is None or b is None:
            return None
        if e.op == "add":
            return a + b
        if e.op == "sub":
            return a - b
        if e.op == "mul":
            return a * b
        if e.op in ("floordiv", "div") and b:
            return a // b
        if e.op == "floormod" and b:
            return a % b
        if e.op == "min":
            return min(a, b)
        if e.op == "max":
            return max(a, b)
    return None


def _flat_index(buf: Buffer, indices: tuple[Expr, ...], env: dict[Var, int]) -> int | None:
    total, stride = 0, 1
    for idx, dim in zip(reversed(indices), reversed(buf.shape), strict=False):
        v = _eval(idx, env)
        if v is None:
            return None
        total += v * stride
        stride *= _const_int(dim, 1024)
    return total


def _access(
    buf: Buffer, indices: tuple[Expr, ...], loops: list[_Loop], iters: int
) -> tuple[float, float, float, float]:
    """(bytes, unique bytes, reuse, innermost stride) of one access under `loops`."""
    elem = _DTYPE_BYTES.get(buf.dtype, 4)
    used = {n for idx in indices for n in walk(idx) if isinstance(n, Var)}
    unique = 1
    for lp in loops:
        if lp.var in used:
            unique *= lp.extent
    stride = 0.0
    if loops:
        inner = loops[-1].var
        base = _flat_index(buf, indices, {})
        step = _flat_index(buf, indices, {inner: 1})
        stride = abs(step - base) if base is not None and step is not None else 1024.0
    return iters * elem, unique * elem, iters / max(unique, 1), stride


def _value_counts(e: Expr) -> tuple[int, int, list[BufferLoad]]:
    flops, calls, loads = 0, 0, []
    for n in walk(e):
        if isinstance(n, BinOp) and n.op in _FLOAT_OPS and n.dtype.startswith(("float", "bf")):
            flops += 1
        elif isinstance(n, Call):
            calls += 1
        elif isinstance(n, Select):
            flops += 1
        elif isinstance(n, BufferLoad):
            loads.append(n)
    return flops, calls, loads


def _store_vector(store: BufferStore, loops: list[_Loop], guarded: bool) -> np.ndarray:
    iters = 1
    for lp in loops:
        iters *= lp.extent
    flops, calls, loads = _value_counts(store.value)
    vec = np.zeros(STORE_FEATURES, dtype=np.float32)
    vector = [lp.extent for lp in loops if lp.kind == "vectorized"]
    unrolled = math.prod(lp.extent for lp in loops if lp.kind == "unrolled")
    parallel = math.prod(lp.extent for lp in loops if lp.kind == "parallel")
    threads = math.prod(lp.extent for lp in loops if lp.thread and "threadIdx" in lp.thread)
    blocks_ = math.prod(
        lp.extent for lp in loops if lp.thread and lp.thread.startswith(("blockIdx", "clusterIdx"))
    )
    vec[0] = _lg(iters)
    vec[1] = _lg(flops * iters)
    vec[2] = _lg(calls * iters)
    vec[3] = _lg(vector[-1] if vector else 0)
    vec[4] = _lg(unrolled)
    vec[5] = _lg(parallel)
    vec[6] = len(loops)
    vec[7] = _lg(loops[-1].extent if loops else 0)
    vec[8] = float(guarded)
    vec[9] = _lg(threads)
    vec[10] = _lg(blocks_)
    vec[11] = float(store.buffer.scope == "global")
    acc = _access(store.buffer, store.indices, loops, iters)
    vec[12], vec[13], vec[14] = _lg(acc[1]), _lg(acc[2]), _lg(acc[3])
    ranked = sorted(
        (*_access(ld.buffer, ld.indices, loops, iters), float(ld.buffer.scope == "global"))
        for ld in loads
        if ld.buffer != store.buffer
    )[::-1]
    for slot, (_, uniq, reuse, stride, glob) in enumerate(ranked[:2]):
        base = 15 + slot * 4
        vec[base : base + 4] = (_lg(uniq), _lg(reuse), _lg(stride), glob)
    vec[23] = len(loads)
    return vec


def _stores(s: Stmt, loops: list[_Loop], guarded: bool) -> Iterator[tuple[np.ndarray, float]]:
    if isinstance(s, SeqStmt):
        for c in s.stmts:
            yield from _stores(c, loops, guarded)
    elif isinstance(s, For):
        lp = _Loop(s.var, _const_int(s.extent, 64), s.kind, s.thread)
        yield from _stores(s.body, [*loops, lp], guarded)
    elif isinstance(s, IfThenElse):
        yield from _stores(s.then_case, loops, True)
        if s.else_case is not None:
            yield from _stores(s.else_case, loops, True)
    elif isinstance(s, Allocate):
        yield from _stores(s.body, loops, guarded)
    elif isinstance(s, BufferStore):
        vec = _store_vector(s, loops, guarded)
        yield vec, float(vec[0] + vec[1])
    else:
        body = getattr(s, "body", None)
        if isinstance(body, Stmt):
            yield from _stores(body, loops, guarded)


def extract(func: PrimFunc) -> np.ndarray:
    """The feature vector (FEATURE_COUNT floats) of a scheduled PrimFunc."""
    lowered = lower(func)
    stores = sorted(_stores(lowered.body, [], False), key=lambda p: -p[1])  # type: ignore[arg-type]
    out = np.zeros(FEATURE_COUNT, dtype=np.float32)
    for slot, (vec, _) in enumerate(stores[:TOP_STORES]):
        out[slot * STORE_FEATURES : (slot + 1) * STORE_FEATURES] = vec
    local = 0
    parallel = 0
    for n in walk(lowered.body):
        if isinstance(n, Allocate):
            try:
                elems = math.prod(_const_int(d, 1024) for d in n.buffer.shape)
                local += elems * _DTYPE_BYTES.get(n.buffer.dtype, 4)
            except DTypeError:
                pass
        elif isinstance(n, For) and n.kind == "parallel":
            parallel += 1
    tail = TOP_STORES * STORE_FEATURES
    out[tail : tail + GLOBAL_FEATURES] = (_lg(local), len(stores), parallel, _lg(len(stores)))
    return out
