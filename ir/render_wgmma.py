"""CUDA text for the Hopper wgmma intrinsics (intrinsics_wgmma.py), used by the CUDA renderer.

Thread t of a warpgroup holds, of a 64 x N float32 accumulator, rows 16 (t / 32) + (t % 32) / 4
(+ 8) and columns 8 c + 2 (t % 4) (+ 1) for c < N / 8: register 4 c + 2 h + e is row + 8 h,
column + e. Operands are read by the tensor cores from shared memory through descriptors:
start address / 16, leading byte offset 16 (unused with swizzling), stride byte offset 1024
(eight 128-byte rows) and the 128-byte swizzle mode; a tile must start 1024-byte aligned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .errors import CodegenError
from .expr import Buffer, BufferLoad, Const, Expr, Var
from .intrinsics import TensorIntrin
from .render_c import c_name
from .stmt import BufferStore
from .visit import walk

if TYPE_CHECKING:
    from .render_cuda import CUDARenderer

SWIZZLE_ALIGN = 1024  # bytes: one 8-row x 128-byte swizzle atom


def swizzle_text(offset: str, nbytes: int, itemsize: int) -> str:
    """The swizzled element offset of `offset` in a tile with `nbytes`-byte rows."""
    if nbytes != 128 or itemsize != 2:
        raise CodegenError(
            f"storage_swizzle {nbytes} is supported for 2-byte elements with 128-byte rows, "
            f"not {itemsize}-byte elements"
        )
    return f"tf_swz128({offset})"


SWIZZLE_HELPER = (
    "__device__ __forceinline__ int64_t tf_swz128(int64_t e) "
    "{ return e ^ (((e >> 6) & 7) << 3); }\n"
)


def _descriptor(ptr: str) -> str:
    return (
        f"((uint64_t)((((unsigned)__cvta_generic_to_shared({ptr})) & 0x3FFFF) >> 4) | "
        "((uint64_t)1 << 16) | ((uint64_t)64 << 32) | ((uint64_t)1 << 62))"
    )


def accumulator_decl(buf: Buffer) -> str:
    """The per-thread register array of a 64 x N `wgmma.accumulator` tile. The columns may
    span several dims (a tile holding both halves of a pair: 64 x 2 x N/2), row-major."""
    shape = [int(d.value) if isinstance(d, Const) else -1 for d in buf.shape]
    cols = math.prod(shape[1:]) if len(shape) >= 2 and min(shape) > 0 else -1
    if shape[0] != 64 or cols <= 0 or cols % 8:
        raise CodegenError(
            f"wgmma accumulator {buf.name} must be one 64 x N tile per warpgroup, got shape "
            f"{shape}; split rows by 64 per warpgroup and columns by N"
        )
    return f"float {c_name(buf.name)}[{cols // 2}];"


def _acc(r: CUDARenderer, access: BufferLoad | BufferStore, zero: dict[Var, Expr]) -> str:
    """The register array of the accumulator tile `access` touches: accumulator_decl made the
    buffer exactly one 64 x N tile, so an intrinsic's tile of it is the whole array."""
    return c_name(access.buffer.name)


def emit(r: CUDARenderer, info: TensorIntrin, body: BufferStore, vs: list[Var], depth: int) -> None:
    """Emit the wgmma intrinsic `info` for the tensorized nest ending in `body`."""
    zero: dict[Var, Expr] = {v: Const(0, "int64") for v in vs}
    n = info.extents[1]
    if info.kind == "fill":
        acc = _acc(r, body, zero)
        r.emit(f"#pragma unroll {n // 2}", depth)
        r.emit(f"for (int tf_e = 0; tf_e < {n // 2}; ++tf_e) {acc}[tf_e] = 0.0f;", depth)
        return
    if info.kind == "store":
        _store(r, body, vs, zero, n, depth)
        return
    acc = _acc(r, body, zero)
    prod = body.value.b  # type: ignore[attr-defined]
    loads = [prod.a.value, prod.b.value]
    a = next(x for x in loads if any(t == vs[0] for t in walk(x)))
    b = next(x for x in loads if x is not a)
    descs = []
    for x, row in ((a, vs[0]), (b, vs[1])):
        sr, sc, base = r._strides(x.buffer, x.indices, row, vs[2])
        width = x.buffer.shape[-1]
        if (
            r.swizzled.get(x.buffer.name) != 128
            or (sr, sc) != (64, 1)
            or not (isinstance(width, Const) and width.value == 64)
        ):
            raise CodegenError(
                f"wgmma reads {x.buffer.name} as rows of 64 contiguous elements in the 128-byte "
                "swizzled layout: cache_read it into 'shared' with 64-wide k tiles, annotate "
                "the copy block storage_swizzle = 128 and leave its rows unpadded"
            )
        descs.append(_descriptor(f"{c_name(x.buffer.name)} + {r.expr(base)}"))
    ty = {"float16": "f16", "bfloat16": "bf16"}[info.in_dtype or "float16"]
    regs = ", ".join(f"%{e}" for e in range(n // 2))
    h = n // 2
    op = f"wgmma.mma_async.sync.aligned.m64n{n}k16.f32.{ty}.{ty}"
    outs = ", ".join(f'"+f"({acc}[{e}])' for e in range(h))
    r.emit("{", depth)
    r.emit(f"const uint64_t tf_da = {descs[0]};", depth + 1)
    r.emit(f"const uint64_t tf_db = {descs[1]};", depth + 1)
    r.emit(
        f'asm volatile("{{\\n.reg .pred p;\\nsetp.ne.b32 p, %{h + 2}, 0;\\n'
        f'{op} {{{regs}}}, %{h}, %{h + 1}, p, 1, 1, 0, 0;\\n}}\\n" : {outs} : '
        f'"l"(tf_da), "l"(tf_db), "r"(1));',
        depth + 1,
    )
    r.emit("}", depth)


def _store(
    r: CUDARenderer, body: BufferStore, vs: list[Var], zero: dict[Var, Expr], n: int, depth: int
) -> None:
    load = body.value
    assert isinstance(load, BufferLoad)
    acc = _acc(r, load, zero)
    sr, sc, base = r._strides(body.buffer, body.indices, vs[0], vs[1])
    dst = f"{c_name(body.buffer.name)}[{r.expr(base)}"
    pairs = body.buffer.dtype == "float32" and sc == 1 and sr % 2 == 0
    r.emit("{", depth)
    d = depth + 1
    r.emit(
        "const int tf_r = ((threadIdx.x >> 5) << 4) + ((threadIdx.x & 31) >> 2), "
        "tf_t = (threadIdx.x & 3) << 1;",
        d,
    )
    r.emit(f"#pragma unroll {n // 8}", d)
    r.emit(f"for (int tf_c = 0; tf_c < {n // 8}; ++tf_c) {{", d)
    for h in (0, 1):
        row, col = f"(tf_r + {8 * h})", "(tf_c * 8 + tf_t)"
        e = f"4 * tf_c + {2 * h}"
        if pairs:
            r.emit(
                f"*(float2*)&{dst} + {row} * {sr} + {col}] = "
                f"make_float2({acc}[{e}], {acc}[{e} + 1]);",
                d + 1,
            )
        else:
            for x in (0, 1):
                r.emit(f"{dst} + {row} * {sr} + ({col} + {x}) * {sc}] = {acc}[{e} + {x}];", d + 1)
    r.emit("}", d)
    r.emit("}", depth)


def batch_open(r: CUDARenderer, depth: int) -> None:
    """Before a batch of wgmma: make register and shared-memory state visible to them."""
    r.emit('asm volatile("wgmma.fence.sync.aligned;\\n" ::: "memory");', depth)


def batch_close(r: CUDARenderer, pending: int, depth: int) -> None:
    """After a batch: commit its MMAs as one group and wait until <= `pending` are in flight."""
    r.emit('asm volatile("wgmma.commit_group.sync.aligned;\\n" ::: "memory");', depth)
    r.emit(
        f'asm volatile("wgmma.wait_group.sync.aligned %0;\\n" :: "n"({pending}) : "memory");',
        depth,
    )


PROXY_FENCE = 'asm volatile("fence.proxy.async.shared::cta;\\n" ::: "memory");'
