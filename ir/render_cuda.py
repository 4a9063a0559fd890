"""CUDA C renderer: the C-style base with CUDA tables and hooks (threads, shared memory,
barriers, cross-thread reductions, 128-bit vector access).

It prints what the CUDA lowering passes (target_passes.py) decided: `SyncThreads` barriers
(pass_thread_sync), `SingleThread` stores made by thread 0 of an axis (pass_predicate), the
wide loads and stores of a loop's `vector_access` (pass_vectorize) and the register arrays of
its `hoisted_loads` (pass_hoist). Thread-bound loops become thread indices (guarded where the
loop is shorter than the launched axis). A software-pipelined loop (pipeline.py) gets
cp.async copies and commit / wait groups; `min_blocks_per_sm` and `block_rasterize` loop
annotations set the second __launch_bounds__ argument and renumber the blocks. A tensorized
loop is printed by its intrinsic family's method (`tensor_families`).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from .annotation_keys import (
    BLOCK_RASTERIZE,
    HOISTED_LOADS,
    MIN_BLOCKS_PER_SM,
    PIPELINE_STAGES,
    TENSORIZE,
    VECTOR_ACCESS,
    WGMMA_BATCH,
)
from .dtypes import is_float, itemsize
from .errors import CodegenError
from .expr import BinOp, Buffer, BufferLoad, Cast, Const, Expr, Var
from .gpu_launch import BLOCK_TAGS, CLUSTER_TAG, LaunchDims, launch_dims, launch_text
from .intrinsics import TensorIntrin
from .intrinsics_wgmma import parse_swizzled
from .pass_hoist import HoistedLoads
from .pass_thread_sync import CLUSTER_SCOPE, SHARED_SCOPES
from .pass_vectorize import VectorAccess, guarded_stores
from .render_c import CStyleRenderer, buffer_elements, c_name
from .simplify import linear, simplify
from .stmt import (
    Allocate,
    BufferStore,
    For,
    IfThenElse,
    PipelineSync,
    PrimFunc,
    SingleThread,
    Stmt,
    SyncThreads,
    ThreadAllReduce,
)
from .visit import fields_of, substitute, walk

STATIC_SHARED_LIMIT = 48 * 1024

_REDUCE_FMT = {"add": "(a + b)", "max": "fmaxf(a, b)", "min": "fminf(a, b)"}
_IDENTITY_TEXT = {"add": "0.0f", "max": "(-INFINITY)", "min": "INFINITY"}


def _allreduce_helpers() -> str:
    out = []
    for op, fmt in _REDUCE_FMT.items():
        ident = _IDENTITY_TEXT[op]
        out.append(
            f"""__device__ __forceinline__ float tf_warp_{op}(float v, int width) {{
  unsigned mask = __activemask();
  for (int o = width >> 1; o > 0; o >>= 1) {{
    float a = v, b = __shfl_xor_sync(mask, v, o);
    v = {fmt};
  }}
  return v;
}}
__device__ __forceinline__ float tf_block_{op}(float v, int width, float* scratch) {{
  if (width <= 32) return tf_warp_{op}(v, width);
  v = tf_warp_{op}(v, 32);
  int tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  int lane = tid & 31, warp = tid >> 5, nw = width >> 5, base = (warp / nw) * nw;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[base + lane] : {ident};
  return tf_warp_{op}(v, 32);
}}"""
        )
    return "\n".join(out)


PRELUDE_CUDA = (
    r"""#include <stdint.h>
#include <math.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <mma.h>

__device__ __forceinline__ int64_t tf_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
__device__ __forceinline__ int64_t tf_floormod(int64_t a, int64_t b) {
  int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
"""
    + _allreduce_helpers()
    + "\n"
)

_VEC_TYPES = {16: "uint4", 8: "uint2"}

CLUSTER_HELPERS = r"""#include <cooperative_groups.h>
template <typename T> __device__ __forceinline__ T* tf_dsmem(T* p, int64_t rank) {
  return cooperative_groups::this_cluster().map_shared_rank(p, (unsigned int)rank);
}
__device__ __forceinline__ void tf_cluster_sync() { cooperative_groups::this_cluster().sync(); }
"""


class CUDARenderer(CStyleRenderer):
    """One `extern "C" __global__` kernel per translation unit, launched as `launch_dims` says."""

    lang: ClassVar[str] = "cuda"
    prelude: ClassVar[str] = PRELUDE_CUDA
    kernel_prefix: ClassVar[str] = 'extern "C" __global__ void'
    types: ClassVar[dict[str, str]] = {
        **CStyleRenderer.types,
        "float16": "half",
        "bfloat16": "__nv_bfloat16",
    }
    float_intrinsics: ClassVar[dict[str, str]] = {
        **CStyleRenderer.float_intrinsics,
        "rsqrt": "rsqrtf({0})",
    }

    # tensor-intrinsic family (the accumulator scope's prefix) -> the method that prints it
    tensor_families: ClassVar[dict[str, str]] = {
        "wmma": "_wmma_intrin",
        "mma": "_mma_sync_intrin",
        "wgmma": "_wgmma_intrin",
    }

    def __init__(self, dim_slots: tuple[str, ...] | None = None) -> None:
        """`dim_slots`: read the symbolic dims from a device array (`tf_dims`, the last
        argument) whose i-th element holds dim `dim_slots[i]`, instead of taking them by
        value; a CUDA graph captured once then serves every size written into that array."""
        super().__init__()
        self.dim_slots = dim_slots
        self._launch = LaunchDims(())
        self._bound: list[str] = []
        # thread / block vars of extent-1 loops: always 0, so a fragment index drops them
        # and stays a compile-time constant (a runtime index puts fragments in local memory)
        self._unit_threads: dict[Var, Expr] = {}
        self._divergent = 0
        self._vec: dict[BufferLoad, str] = {}
        self._counter = 0
        self._needs_scratch = False
        self._dyn_offsets: dict[str, int | str] = {}  # C offset: bytes, or an expression
        self._hoisted: dict[BufferLoad, str] = {}
        self.swizzled: dict[str, int] = {}  # shared buffers in a swizzled layout: row bytes
        self._block_text: dict[str, str] = {}  # remapped block indices (rasterisation)
        self.dynamic_shared_bytes: int | str = 0  # an expression when a size is symbolic

    # ------------------------------------------------------------ expressions

    def const(self, c: Const) -> str:
        if is_float(c.dtype):
            f = float(c.value)
            if f != f or f in (float("inf"), float("-inf")):
                text = {"inf": "INFINITY", "-inf": "(-INFINITY)"}.get(str(f), "NAN")
                return text if c.dtype == "float32" else self.from_float(text, c.dtype)
        return super().const(c)

    def to_float(self, text: str, dtype: str) -> str:
        if dtype == "float16":
            return f"__half2float({text})"
        if dtype == "bfloat16":
            return f"__bfloat162float({text})"
        return super().to_float(text, dtype)

    def from_float(self, text: str, dtype: str) -> str:
        if dtype == "float16":
            return f"__float2half_rn({text})"
        if dtype == "bfloat16":
            return f"__float2bfloat16_rn({text})"
        return super().from_float(text, dtype)

    def expr(self, e: Expr) -> str:
        if isinstance(e, BufferLoad) and e in self._vec:
            return self._vec[e]
        if isinstance(e, BufferLoad) and e.buffer.scope == CLUSTER_SCOPE:
            return self._cluster_ref(e.buffer, e.indices)
        return super().expr(e)

    def _cluster_ref(self, buf: Buffer, indices: tuple[Expr, ...]) -> str:
        """An element of a `shared.cluster` buffer, in the shared memory of the block whose
        rank is its first index (every block allocates the whole buffer at one offset)."""
        flat = self.flat_index(buf, indices)
        return f"(*tf_dsmem({c_name(buf.name)} + ({flat}), {self.expr(indices[0])}))"

    def cast(self, e: Cast) -> str:
        src, dst = e.value.dtype, e.dtype
        if src not in ("float16", "bfloat16") and dst not in ("float16", "bfloat16"):
            return super().cast(e)
        inner = self.expr(e.value)
        wide = self.to_float(inner, src) if is_float(src) else f"((float)({inner}))"
        if dst in ("float16", "bfloat16"):
            return self.from_float(wide, dst)
        return f"(({self.ctype(dst)})({wide}))"

    def binop(self, e: BinOp) -> str:
        a, b = e.a, e.b
        half = ("float16", "bfloat16")
        if e.dtype in half or (e.op in ("lt", "le", "gt", "ge", "eq", "ne") and a.dtype in half):
            sa, sb = self.to_float(self.expr(a), a.dtype), self.to_float(self.expr(b), b.dtype)
            text = self._binop_text(e.op, sa, sb, "float32")
            return self.from_float(text, e.dtype) if e.dtype in half else text
        return self._binop_text(e.op, self.expr(a), self.expr(b), e.dtype, a, b)

    def flat_index(self, buf: Buffer, indices: tuple[Expr, ...]) -> str:
        text = super().flat_index(buf, indices)
        return self._swizzle(buf, text)

    def _swizzle(self, buf: Buffer, offset: str) -> str:
        """`offset` (elements) moved to where the buffer's swizzled layout keeps it."""
        if buf.name not in self.swizzled:
            return offset
        from .render_wgmma import swizzle_text

        return swizzle_text(offset, self.swizzled[buf.name], itemsize(buf.dtype))

    # ------------------------------------------------------------ statements

    def _in_threads(self) -> bool:
        return any(t in BLOCK_TAGS for t in self._bound)

    def stmt(self, s: Stmt, depth: int) -> None:
        if isinstance(s, SyncThreads):
            self.emit("tf_cluster_sync();" if s.cluster else "__syncthreads();", depth)
        elif isinstance(s, ThreadAllReduce):
            self._allreduce(s, depth)
        elif isinstance(s, BufferStore):
            self._store(s, depth)
        elif isinstance(s, SingleThread):
            if not isinstance(s.body, BufferStore):
                raise CodegenError("only a store can be made by a single thread")
            self._store(s.body, depth, s.threads)
        elif isinstance(s, PipelineSync):
            self._pipeline_sync(s, depth)
        elif isinstance(s, IfThenElse) and self._in_threads():
            self._divergent += 1
            super().stmt(s, depth)
            self._divergent -= 1
        else:
            super().stmt(s, depth)

    def _store(self, s: BufferStore, depth: int, threads: tuple[str, ...] = ()) -> None:
        """A store; made by thread 0 of `threads` only when pass_predicate says so."""
        target = f"{c_name(s.buffer.name)}[{self.flat_index(s.buffer, s.indices)}]"
        if s.buffer.scope == CLUSTER_SCOPE:
            target = self._cluster_ref(s.buffer, s.indices)
        self.emit(f"{_thread_zero(threads)}{target} = {self.store_value(s)};", depth)

    def _pipeline_sync(self, s: PipelineSync, depth: int) -> None:
        if s.op == "commit":
            self.emit('asm volatile("cp.async.commit_group;\\n" ::: "memory");', depth)
        elif s.op == "wait":
            self.emit(
                f'asm volatile("cp.async.wait_group %0;\\n" :: "n"({s.pending}) : "memory");',
                depth,
            )
            if self.swizzled:  # copies seen by wgmma, which reads through the async proxy
                from .render_wgmma import PROXY_FENCE

                self.emit(PROXY_FENCE, depth)
            self.emit("__syncthreads();", depth)
        else:
            raise CodegenError(f"unknown pipeline step {s.op!r}")

    def _pipelined_loop(self, s: For, depth: int) -> None:
        """The steady state of a software pipeline: its waits are the only barriers."""
        v = c_name(s.var.name)
        self.emit(f"for (int64_t {v} = 0; {v} < {self.expr(s.extent)}; ++{v}) {{", depth)
        self.stmt(s.body, depth + 1)
        self.emit("}", depth)

    def loop_pragmas(self, s: For) -> list[str]:
        if s.kind == "parallel":
            raise CodegenError(
                f"loop {s.var.name} is parallel (CPU threads); bind it to a GPU thread axis"
            )
        if s.kind in ("unrolled", "vectorized") or s.thread == "vthread":
            if isinstance(s.extent, Const):
                return [f"#pragma unroll {max(1, min(int(s.extent.value), 64))}"]
            return ["#pragma unroll 4"]
        return []

    def loop(self, s: For, depth: int) -> None:
        intrin = dict(s.annotations).get(TENSORIZE)
        if intrin is not None:
            self._tensorized(s, str(intrin), depth)
            return
        if s.kind == "thread_binding" and s.thread != "vthread":
            self._thread_loop(s, depth)
            return
        if PIPELINE_STAGES in dict(s.annotations) and not self._in_threads():
            self._pipelined_loop(s, depth)
            return
        if WGMMA_BATCH in dict(s.annotations):
            from . import render_wgmma

            render_wgmma.batch_open(self, depth)
            body = dataclasses.replace(s, annotations=())
            self.loop(body, depth)
            render_wgmma.batch_close(self, int(dict(s.annotations)[WGMMA_BATCH]), depth)
            return
        access = dict(s.annotations).get(VECTOR_ACCESS)
        if access is not None:
            self._vector_loop(s, access, depth)
            return
        hoisted = dict(s.annotations).get(HOISTED_LOADS)
        if hoisted is not None:
            self._hoisted_loop(s, hoisted, depth)
            return
        for p in self.loop_pragmas(s):
            self.emit(p, depth)
        v = c_name(s.var.name)
        self.emit(f"for (int64_t {v} = 0; {v} < {self.expr(s.extent)}; ++{v}) {{", depth)
        self.stmt(s.body, depth + 1)
        self.emit("}", depth)

    def _thread_loop(self, s: For, depth: int) -> None:
        tag = s.thread or ""
        v = c_name(s.var.name)
        self.emit("{", depth)
        self.emit(f"const int64_t {v} = {self._block_text.get(tag, f'(int64_t){tag}')};", depth + 1)
        launched = self._launch.get(tag)
        ext = simplify(s.extent)
        guarded = (int(ext.value) if isinstance(ext, Const) else launch_text(ext)) != launched
        self._bound.append(tag)
        unit = isinstance(ext, Const) and int(ext.value) == 1
        if unit:
            self._unit_threads[s.var] = Const(0, s.var.dtype)
        if guarded:
            self.emit(f"if ({v} < {self.expr(ext)}) {{", depth + 1)
            self._divergent += tag in BLOCK_TAGS
            self.stmt(s.body, depth + 2)
            self._divergent -= tag in BLOCK_TAGS
            self.emit("}", depth + 1)
        else:
            self.stmt(s.body, depth + 1)
        if unit:
            del self._unit_threads[s.var]
        self._bound.pop()
        self.emit("}", depth)

    def _allreduce(self, s: ThreadAllReduce, depth: int) -> None:
        n = s.extent
        if s.thread != "threadIdx.x":
            raise CodegenError(f"cross-thread reductions run over threadIdx.x, not {s.thread}")
        if self._launch.get("threadIdx.x") != n and n > 32:
            raise CodegenError(
                f"a reduction over more than a warp needs every launched thread: its loop has "
                f"{n} threads but threadIdx.x is launched with {self._launch.get('threadIdx.x')}"
            )
        if n & (n - 1) or n > 1024:
            raise CodegenError(
                f"a reduction over threadIdx.x needs a power of two <= 1024 threads, got {n}"
            )
        if n > 32 and self._divergent:
            raise CodegenError(
                "a reduction over more than 32 threads cannot sit under a thread-dependent guard"
            )
        if s.buffer.dtype != "float32":
            raise CodegenError(f"cross-thread reductions combine float32, not {s.buffer.dtype}")
        self._needs_scratch = self._needs_scratch or n > 32
        name = c_name(s.buffer.name)
        scratch = "tf_red_scratch" if n > 32 else "nullptr"
        size = s.buffer.shape[0]
        if isinstance(size, Const) and size.value == 1:
            self.emit(f"{name}[0] = tf_block_{s.op}({name}[0], {n}, {scratch});", depth)
            return
        i = self._fresh("r")  # a few rows reduced at once: one all-reduce each
        self.emit("#pragma unroll", depth)
        self.emit(f"for (int {i} = 0; {i} < {size}; ++{i}) {{", depth)
        self.emit(f"{name}[{i}] = tf_block_{s.op}({name}[{i}], {n}, {scratch});", depth + 1)
        self.emit("}", depth)

    # ------------------------------------------------------------ vector access

    def _fresh(self, stem: str) -> str:
        self._counter += 1
        return f"tf_{stem}{self._counter}"

    def _vector_loop(self, s: For, access: VectorAccess, depth: int) -> None:
        """A loop with the wide loads and store its `vector_access` annotation names."""
        n = access.lanes
        if access.async_copy:
            self._async_copy(access, depth)
            return
        found = guarded_stores(s)
        assert found is not None
        guards, stores = found
        for g in guards:
            self.emit(f"if ({self.expr(g)}) {{", depth)
            depth += 1
        v = c_name(s.var.name)
        saved = dict(self._vec)
        for x, base in access.loads:
            vt = _VEC_TYPES[itemsize(x.buffer.dtype) * n]
            name = self._fresh("v")
            ct = self.ctype(x.buffer.dtype)
            off = self._swizzle(x.buffer, self.expr(base))
            src = f"*(const {vt}*)({c_name(x.buffer.name)} + {off})"
            self.emit(f"const {vt} {name} = {self._hoisted.get(x, src)};", depth)
            self._vec[x] = f"((const {ct}*)&{name})[{v}]"
        if access.store is not None and access.store_base is not None:
            st, base = access.store, access.store_base
            vt = _VEC_TYPES[itemsize(st.buffer.dtype) * n]
            ct = self.ctype(st.buffer.dtype)
            tmp = self._fresh("s")
            self.emit(f"{vt} {tmp};", depth)
            self.emit(f"#pragma unroll {n}", depth)
            self.emit(f"for (int64_t {v} = 0; {v} < {n}; ++{v}) {{", depth)
            self.emit(f"(({ct}*)&{tmp})[{v}] = {self.store_value(st)};", depth + 1)
            self.emit("}", depth)
            dst = f"{c_name(st.buffer.name)} + {self._swizzle(st.buffer, self.expr(base))}"
            self.emit(f"{_thread_zero(access.store_threads)}*({vt}*)({dst}) = {tmp};", depth)
        else:
            self.emit(f"#pragma unroll {n}", depth)
            self.emit(f"for (int64_t {v} = 0; {v} < {n}; ++{v}) {{", depth)
            for st in stores:
                self.stmt(st, depth + 1)
            self.emit("}", depth)
        self._vec = saved
        for _ in guards:
            depth -= 1
            self.emit("}", depth)

    def _hoisted_loop(self, s: For, hoisted: HoistedLoads, depth: int) -> None:
        """The loads its `hoisted_loads` annotation names go into register arrays first, one
        entry per iteration; the loop then computes from them."""
        n, count = hoisted.lanes, hoisted.count
        v = c_name(s.var.name)
        added = []
        for x, base in hoisted.loads:
            vt = _VEC_TYPES[itemsize(x.buffer.dtype) * n]
            arr = self._fresh("h")
            self.emit(f"{vt} {arr}[{count}];", depth)
            self.emit(f"#pragma unroll {count}", depth)
            self.emit(f"for (int64_t {v} = 0; {v} < {count}; ++{v}) {{", depth)
            src = f"{c_name(x.buffer.name)} + {self.expr(base)}"
            self.emit(f"{arr}[{v}] = *(const {vt}*)({src});", depth + 1)
            self.emit("}", depth)
            self._hoisted[x] = f"{arr}[{v}]"
            added.append(x)
        for p in self.loop_pragmas(s):
            self.emit(p, depth)
        self.emit(f"for (int64_t {v} = 0; {v} < {count}; ++{v}) {{", depth)
        self.stmt(s.body, depth + 1)
        self.emit("}", depth)
        for x in added:
            del self._hoisted[x]

    def _async_copy(self, access: VectorAccess, depth: int) -> None:
        """A 16-byte global -> shared move as `cp.async.cg` (no registers, no wait here)."""
        st, dst_base = access.store, access.store_base
        assert st is not None and dst_base is not None and isinstance(st.value, BufferLoad)
        src = st.value
        dst = f"{c_name(st.buffer.name)} + {self._swizzle(st.buffer, self.expr(dst_base))}"
        gsrc = f"{c_name(src.buffer.name)} + {self.expr(dict(access.loads)[src])}"
        prefix = _thread_zero(access.store_threads)
        self.emit(
            f'{prefix}asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\\n" :: '
            f'"r"((unsigned)__cvta_generic_to_shared({dst})), "l"({gsrc}) : "memory");',
            depth,
        )

    # ------------------------------------------------------------ tensor intrinsics

    def _layout(
        self, buf: Buffer, indices: tuple[Expr, ...], row: Var, col: Var
    ) -> tuple[str, Expr, int]:
        """(major, base flat index, leading dimension) of a 16 x 16 tile indexed by (row, col)."""
        flat: Expr | None = None
        for idx, dim in zip(indices, buf.shape, strict=True):
            flat = idx if flat is None else flat * dim + idx
        assert flat is not None
        terms, _ = linear(simplify(flat))
        sr, sc = terms.get(row, 0), terms.get(col, 0)
        base = simplify(substitute(flat, {row: Const(0, "int64"), col: Const(0, "int64")}))
        if sc == 1 and sr > 0:
            return "row", base, sr
        if sr == 1 and sc > 0:
            return "col", base, sc
        raise CodegenError(
            f"tile of {buf.name} is not contiguous along a row or a column (strides {sr}, {sc})"
        )

    def _fragment(self, load_or_store: BufferLoad | BufferStore, zero: dict[Var, Expr]) -> str:
        buf = load_or_store.buffer
        rows, cols = _tile_dims(buf)
        zero = {**zero, **self._unit_threads}
        r0, c0 = (simplify(substitute(load_or_store.indices[d], zero)) for d in (rows, cols))
        per_row = int(buf.shape[cols].value) // 16  # type: ignore[attr-defined]
        idx = simplify((r0 // 16) * per_row + c0 // 16)
        return f"{c_name(buf.name)}[{self.expr(idx)}]"

    def _tensorized(self, s: For, name: str, depth: int) -> None:
        from .intrinsics import get_intrin

        info = get_intrin(name)
        chain = [s]
        while isinstance(chain[-1].body, For):
            chain.append(chain[-1].body)  # type: ignore[arg-type]
        body = chain[-1].body
        if not isinstance(body, BufferStore):
            raise CodegenError(
                f"tensorized loop {s.var.name} has guards or extra statements; "
                "its tile sizes must divide the extents"
            )
        vs = [c.var for c in chain]
        zero: dict[Var, Expr] = {v: Const(0, "int64") for v in vs}
        family = info.acc_scope.split(".", 1)[0]
        printer = self.tensor_families.get(family)
        if printer is None:
            raise CodegenError(f"intrinsic {name}: no CUDA printer for the {family!r} family")
        getattr(self, printer)(info, body, vs, zero, depth)

    def _wgmma_intrin(
        self,
        info: TensorIntrin,
        body: BufferStore,
        vs: list[Var],
        zero: dict[Var, Expr],
        depth: int,
    ) -> None:
        """Hopper warpgroup MMA (render_wgmma)."""
        from . import render_wgmma

        render_wgmma.emit(self, info, body, vs, depth)

    def _wmma_intrin(
        self,
        info: TensorIntrin,
        body: BufferStore,
        vs: list[Var],
        zero: dict[Var, Expr],
        depth: int,
    ) -> None:
        """The WMMA family: fragments in nvcuda::wmma objects, loaded from memory per MMA."""
        wmma = "nvcuda::wmma"
        if info.kind == "fill":
            frag = self._fragment(body, zero)
            self.emit(f"{wmma}::fill_fragment({frag}, 0.0f);", depth)
            return
        if info.kind == "store":
            load = body.value
            assert isinstance(load, BufferLoad)
            frag = self._fragment(load, zero)
            major, base, ld = self._layout(body.buffer, body.indices, vs[0], vs[1])
            dst = f"{c_name(body.buffer.name)} + {self.expr(base)}"
            self.emit(
                f"{wmma}::store_matrix_sync({dst}, {frag}, {ld}, {wmma}::mem_{major}_major);", depth
            )
            return
        frag = self._fragment(body, zero)
        prod = body.value.b  # type: ignore[attr-defined]
        loads = [prod.a.value, prod.b.value]
        a = next(x for x in loads if any(t == vs[0] for t in walk(x)))
        b = next(x for x in loads if x is not a)
        ct = self.ctype(a.buffer.dtype)
        a_major, a_base, a_ld = self._layout(a.buffer, a.indices, vs[0], vs[2])
        b_major, b_base, b_ld = self._layout(b.buffer, b.indices, vs[2], vs[1])
        self.emit("{", depth)
        d = depth + 1
        self.emit(
            f"{wmma}::fragment<{wmma}::matrix_a, 16, 16, 16, {ct}, {wmma}::{a_major}_major> tf_fa;",
            d,
        )
        self.emit(
            f"{wmma}::fragment<{wmma}::matrix_b, 16, 16, 16, {ct}, {wmma}::{b_major}_major> tf_fb;",
            d,
        )
        self.emit(
            f"{wmma}::load_matrix_sync(tf_fa, {c_name(a.buffer.name)} + {self.expr(a_base)}, "
            f"{a_ld});",
            d,
        )
        self.emit(
            f"{wmma}::load_matrix_sync(tf_fb, {c_name(b.buffer.name)} + {self.expr(b_base)}, "
            f"{b_ld});",
            d,
        )
        self.emit(f"{wmma}::mma_sync({frag}, tf_fa, tf_fb, {frag});", d)
        self.emit("}", depth)

    def _mma_sync_intrin(
        self,
        info: TensorIntrin,
        body: BufferStore,
        vs: list[Var],
        zero: dict[Var, Expr],
        depth: int,
    ) -> None:
        """The mma.sync family: ldmatrix into, MMAs on and stores from per-lane registers.

        Lane l of an m16n8k16 fragment holds row l / 4 and column pair 2 (l % 4) of each 8 x 8
        quarter; an accumulator tile (two n8 halves) is 8 floats, an operand tile 4 words.
        """
        kind, in_dtype = info.kind, info.in_dtype
        if kind == "fill":
            frag = self._fragment(body, zero)
            for e in range(8):
                self.emit(f"{frag}[{e}] = 0.0f;", depth)
            return
        if kind == "store":
            load = body.value
            assert isinstance(load, BufferLoad)
            frag = self._fragment(load, zero)
            sr, sc, base = self._strides(body.buffer, body.indices, vs[0], vs[1])
            dst = f"{c_name(body.buffer.name)}[{self.expr(base)}"
            self.emit("{", depth)
            d = depth + 1
            self.emit("const int tf_g = threadIdx.x >> 2, tf_t = (threadIdx.x & 3) << 1;", d)
            terms, c0 = linear(base)
            pairs = (  # each lane's two adjacent columns as one 8-byte store
                body.buffer.dtype == "float32"
                and sc == 1
                and sr % 2 == 0
                and int(c0) % 2 == 0
                and all(int(v) % 2 == 0 for v in terms.values())
            )
            for e in range(0, 8, 2) if pairs else range(8):
                row = f"(tf_g + {8 * ((e >> 1) & 1)})"
                col = f"(tf_t + {8 * (e >> 2) + (e & 1)})"
                if pairs:
                    self.emit(
                        f"*(float2*)&{dst} + {row} * {sr} + {col}] = "
                        f"make_float2({frag}[{e}], {frag}[{e + 1}]);",
                        d,
                    )
                else:
                    self.emit(f"{dst} + {row} * {sr} + {col} * {sc}] = {frag}[{e}];", d)
            self.emit("}", depth)
            return
        if kind == "load":
            src = body.value
            assert isinstance(src, BufferLoad)
            frag = self._fragment(body, zero)
            sr, sc, base = self._strides(src.buffer, src.indices, vs[0], vs[1])
            if sc == 1:
                trans = ""
            elif sr == 1:
                trans = ".trans"
            else:
                raise CodegenError(
                    f"ldmatrix tile of {src.buffer.name} is not contiguous along a row or a "
                    f"column (strides {sr}, {sc})"
                )
            # quarter q of the x4 load: a -> (rows, cols) (0,0) (8,0) (0,8) (8,8); b -> (0,0)
            # (0,8) (8,0) (8,8); lane 8q + i points at the i-th stored row of quarter q
            a_side = body.buffer.scope == "mma.matrix_a"
            r_off = "((tf_q & 1) << 3)" if a_side else "((tf_q >> 1) << 3)"
            c_off = "((tf_q >> 1) << 3)" if a_side else "((tf_q & 1) << 3)"
            if trans:
                c_off += " + tf_i"
            else:
                r_off += " + tf_i"
            ct = self.ctype(src.buffer.dtype)
            self.emit("{", depth)
            d = depth + 1
            self.emit("const int tf_q = threadIdx.x >> 3, tf_i = threadIdx.x & 7;", d)
            self.emit(
                f"const {ct}* tf_p = {c_name(src.buffer.name)} + {self.expr(base)} + "
                f"({r_off}) * {sr} + ({c_off}) * {sc};",
                d,
            )
            outs = ", ".join(f'"=r"({frag}[{e}])' for e in range(4))
            self.emit(
                f'asm volatile("ldmatrix.sync.aligned.m8n8.x4{trans}.shared.b16 '
                f'{{%0, %1, %2, %3}}, [%4];\\n" : {outs} : '
                f'"r"((unsigned)__cvta_generic_to_shared(tf_p)));',
                d,
            )
            self.emit("}", depth)
            return
        frag = self._fragment(body, zero)
        prod = body.value.b  # type: ignore[attr-defined]
        loads = [prod.a.value, prod.b.value]
        a = next(x for x in loads if x.buffer.scope == "mma.matrix_a")
        b = next(x for x in loads if x.buffer.scope == "mma.matrix_b")
        fa, fb = self._fragment(a, zero), self._fragment(b, zero)
        ty = {"float16": "f16", "bfloat16": "bf16"}[in_dtype or "float16"]
        op = f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32"
        for half in (0, 1):  # columns 0..7 and 8..15 of the tile
            acc = ", ".join(f'"+f"({frag}[{4 * half + e}])' for e in range(4))
            ins = ", ".join(
                [f'"r"({fa}[{e}])' for e in range(4)]
                + [f'"r"({fb}[{2 * half + e}])' for e in range(2)]
            )
            self.emit(
                f'asm("{op} {{%0, %1, %2, %3}}, {{%4, %5, %6, %7}}, {{%8, %9}}, '
                f'{{%0, %1, %2, %3}};\\n" : {acc} : {ins});',
                depth,
            )

    def _strides(
        self, buf: Buffer, indices: tuple[Expr, ...], row: Var, col: Var
    ) -> tuple[int, int, Expr]:
        """(row stride, column stride, base flat index) of a tile of `buf` indexed by (row, col)."""
        flat: Expr | None = None
        for idx, dim in zip(indices, buf.shape, strict=True):
            flat = idx if flat is None else flat * dim + idx
        assert flat is not None
        terms, _ = linear(simplify(flat))
        base = simplify(substitute(flat, {row: Const(0, "int64"), col: Const(0, "int64")}))
        return int(terms.get(row, 0)), int(terms.get(col, 0)), base

    # ------------------------------------------------------------ storage

    def allocate(self, s: Allocate, depth: int) -> None:
        buf = s.buffer
        size = buffer_elements(buf)
        ct, name = self.ctype(buf.dtype), c_name(buf.name)
        if buf.scope == "global":
            raise CodegenError(
                f"intermediate {buf.name} lives in global memory, which a kernel cannot allocate; "
                "compute it under a thread loop and set_scope it to 'shared' or 'local'"
            )
        if buf.scope in SHARED_SCOPES and name in self._dyn_offsets:  # planned, maybe symbolic
            off = self._dyn_offsets[name]
            self.emit(f"{ct}* {name} = ({ct}*)(tf_dyn_smem + {off});", depth)
            self.stmt(s.body, depth)
            return
        if not isinstance(size, Const):
            raise CodegenError(
                f"{buf.scope} buffer {buf.name} has symbolic size {size}; tile it to a constant"
            )
        n = int(size.value)
        if buf.scope == "wmma.accumulator":
            _tile_dims(buf)  # a 2-D tile of 16 x 16 fragments, or raise
            frag = "nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>"
            self.emit(f"{frag} {name}[{n // 256}];", depth)
            self.stmt(s.body, depth)
            return
        if buf.scope == "wgmma.accumulator":
            from .render_wgmma import accumulator_decl

            self.emit(accumulator_decl(buf), depth)
            self.stmt(s.body, depth)
            return
        if buf.scope.startswith("mma."):
            _tile_dims(buf)  # a 2-D tile of 16 x 16 tiles (unit dims aside), or raise
            if buf.scope == "mma.accumulator":
                self.emit(f"float {name}[{n // 256}][8];", depth)
            else:
                self.emit(f"unsigned {name}[{n // 256}][4];", depth)
            self.stmt(s.body, depth)
            return
        if buf.scope in ("wmma.matrix_a", "wmma.matrix_b"):
            raise CodegenError(
                f"{buf.scope} buffers are not supported; tensorize loads from memory"
            )
        if buf.scope in SHARED_SCOPES:
            align = 1024 if buf.name in self.swizzled else 128  # a swizzle atom
            self.emit(f"__shared__ __align__({align}) {ct} {name}[{n}];", depth)
        else:
            self.emit(f"{ct} {name}[{n}] __attribute__((aligned(16)));", depth)
        self.stmt(s.body, depth)

    def _plan_shared(self, lowered: PrimFunc) -> None:
        """Static shared arrays up to 48 KB; above that all of them move to dynamic memory,
        where an allocation shares bytes with any other that is not live at the same time
        (neither encloses the other).

        An array whose size depends on a symbolic dim (a row of `m` scores, say) is dynamic
        too: the constant arrays keep their planned offsets, each symbolic one follows them
        (no sharing), and the launch's dynamic bytes become an expression over the dims.
        A `shared.cluster` array shares bytes with no other: the cluster's other blocks may
        still read it after this block has moved on.
        """
        placed: list[tuple[Buffer, int, int]] = []  # buffer, start offset, end offset
        symbolic: list[tuple[Buffer, Expr]] = []  # buffer, bytes rounded to 128

        def visit(s: Stmt, chain: list[int]) -> None:
            if isinstance(s, Allocate) and s.buffer.scope in SHARED_SCOPES:
                b = s.buffer
                size = buffer_elements(b)
                if not isinstance(size, Const):
                    if b.name in self.swizzled:
                        raise CodegenError(f"swizzled shared buffer {b.name} has symbolic size")
                    isz = Const(itemsize(b.dtype), size.dtype)
                    c127, c128 = Const(127, size.dtype), Const(128, size.dtype)
                    rounded = BinOp("mul", BinOp("floordiv", BinOp(
                        "add", BinOp("mul", size, isz), c127), c128), c128)  # fmt: skip
                    symbolic.append((b, rounded))
                    visit(s.body, chain)
                    return
                nbytes = (int(size.value) * itemsize(b.dtype) + 127) // 128 * 128
                kept = range(len(placed)) if b.scope == CLUSTER_SCOPE else chain
                kept = [*kept, *(i for i, p in enumerate(placed) if p[0].scope == CLUSTER_SCOPE)]
                start = max((placed[i][2] for i in kept), default=0)
                if b.name in self.swizzled:  # swizzled tiles start on a 1024-byte atom
                    start = (start + 1023) // 1024 * 1024
                placed.append((b, start, start + nbytes))
                visit(s.body, [*chain, len(placed) - 1])
                return
            for f in fields_of(type(s)):
                child = getattr(s, f)
                for c in child if isinstance(child, tuple) else (child,):
                    if isinstance(c, Stmt):
                        visit(c, chain)

        visit(lowered.body, [])
        fixed = max((end for _, _, end in placed), default=0)
        if not symbolic:
            if sum(end - start for _, start, end in placed) <= STATIC_SHARED_LIMIT:
                return
            for b, start, _ in placed:
                self._dyn_offsets[c_name(b.name)] = start
            self.dynamic_shared_bytes = fixed
            return
        for b, start, _ in placed:
            self._dyn_offsets[c_name(b.name)] = start
        offset: Expr = Const(fixed, symbolic[0][1].dtype)
        for b, nbytes in symbolic:
            self._dyn_offsets[c_name(b.name)] = self.expr(simplify(offset))
            offset = BinOp("add", offset, nbytes)
        self.dynamic_shared_bytes = launch_text(simplify(offset))

    # ------------------------------------------------------------ function

    def signature(self, func: PrimFunc, entry: str, scalars: tuple[Var, ...]) -> str:
        """Inputs are `const` (read-only: the compiler may use the non-coherent load path)."""
        stored = {n.buffer.name for n in walk(func.body) if isinstance(n, BufferStore)}
        args = [
            f"{'const ' if b.name not in stored else ''}{self.ctype(b.dtype)}* "
            f"{self.restrict} {c_name(b.name)}"
            for b in func.params
        ]
        if self.dim_slots is None:
            args += [f"int64_t {c_name(v.name)}" for v in scalars]
        elif scalars:
            args.append("const int64_t* __restrict__ tf_dims")
        return f"{self.kernel_prefix} {entry}({', '.join(args)})"

    def _dims_from_memory(self, scalars: tuple[Var, ...]) -> list[str]:
        """Lines that read each symbolic dim from its slot of `tf_dims` (with `dim_slots`)."""
        if self.dim_slots is None:
            return []
        missing = [v.name for v in scalars if v.name not in self.dim_slots]
        if missing:
            raise CodegenError(
                f"dims {missing} have no slot in {list(self.dim_slots)}; name a slot for "
                "every symbolic dim of the kernel"
            )
        return [
            f"  const int64_t {c_name(v.name)} = tf_dims[{self.dim_slots.index(v.name)}];"
            for v in scalars
        ]

    def _rasterize(self, lowered: PrimFunc) -> list[str]:
        """Lines that renumber the blocks in groups of G blockIdx.y rows (G from the
        `block_rasterize` annotation): consecutive blocks walk down a group's column, then
        on to its next column, so the blocks resident at once share x and w tiles in L2."""
        groups = _loop_annotations(lowered, BLOCK_RASTERIZE)
        if not groups:
            return []
        g = max(groups)
        if g < 1 or not (self._launch.used("blockIdx.x") and self._launch.used("blockIdx.y")):
            raise CodegenError(
                f"block_rasterize = {g} needs a group size >= 1 and a kernel launched over "
                "blockIdx.x and blockIdx.y; bind block loops to both axes"
            )
        self._block_text = {"blockIdx.x": "tf_bx", "blockIdx.y": "tf_by"}
        span = f"({g} * (int64_t)gridDim.x)"
        return [
            "  const int64_t tf_lin = (int64_t)blockIdx.y * gridDim.x + blockIdx.x;",
            f"  const int64_t tf_first = tf_lin / {span} * {g};",
            f"  const int64_t tf_rows = (int64_t)gridDim.y - tf_first < {g} ? "
            f"(int64_t)gridDim.y - tf_first : {g};",
            f"  const int64_t tf_by = tf_first + tf_lin % {span} % tf_rows;",
            f"  const int64_t tf_bx = tf_lin % {span} / tf_rows;",
        ]

    def _cluster(self, rasterized: bool) -> list[str]:
        """Lines that split blockIdx.x into the cluster's row and the block's rank in it,
        when a loop is bound to clusterIdx.x (clusters of consecutive blockIdx.x)."""
        if all(tag != CLUSTER_TAG for tag, _ in self._launch.extents):
            return []
        if rasterized:
            raise CodegenError("block_rasterize and clusterIdx.x cannot share a kernel")
        c = self._launch.cluster
        self._block_text = {"blockIdx.x": "tf_bx", CLUSTER_TAG: "tf_crank"}
        return [
            f"  const int64_t tf_bx = (int64_t)blockIdx.x / {c};",
            f"  const int64_t tf_crank = (int64_t)blockIdx.x % {c};",
        ]

    def render(self, lowered: PrimFunc, entry: str, scalars: tuple[Var, ...]) -> str:
        self._launch = launch_dims(lowered)
        self.swizzled = parse_swizzled(lowered.attrs)
        self._plan_shared(lowered)
        self._lines = []
        raster = self._rasterize(lowered)
        cluster = self._cluster(bool(raster))
        self.stmt(lowered.body, 1)
        head: list[str] = self._dims_from_memory(scalars) + raster + cluster
        if cluster:  # no block leaves while others may still read its shared memory
            self._lines.append("  tf_cluster_sync();")
        if self._needs_scratch:
            head.append("  __shared__ float tf_red_scratch[32];")
        if self._dyn_offsets:
            align = 1024 if self.swizzled else 128
            head.append(f"  extern __shared__ __align__({align}) unsigned char tf_dyn_smem[];")
        body = "\n".join(head + self._lines)
        threads = 1
        for t in BLOCK_TAGS:
            threads *= int(self._launch.get(t))
        bounds = str(threads)
        min_blocks = _loop_annotations(lowered, MIN_BLOCKS_PER_SM)
        if min_blocks:  # the register budget that lets this many blocks share a multiprocessor
            bounds += f", {max(min_blocks)}"
        attrs = f"__launch_bounds__({bounds})"
        if cluster:
            attrs = f"__cluster_dims__({self._launch.cluster}, 1, 1) {attrs}"
        sig = self.signature(lowered, entry, scalars).replace(
            "__global__ void", f"__global__ void {attrs}", 1
        )
        prelude = self.prelude + (CLUSTER_HELPERS if cluster else "")
        if self.swizzled:
            from .render_wgmma import SWIZZLE_HELPER

            prelude += SWIZZLE_HELPER
        return f"{prelude}\n{sig} {{\n{body}\n}}\n"


def _thread_zero(threads: tuple[str, ...]) -> str:
    """`if (threadIdx.x == 0 && ...) ` before a statement only thread 0 of `threads` runs."""
    return f"if ({' && '.join(f'{t} == 0' for t in threads)}) " if threads else ""


def _loop_annotations(func: PrimFunc, key: str) -> list[int]:
    """The integer values of every loop annotation `key` in the function, in program order."""
    return [
        int(v) for n in walk(func.body) if isinstance(n, For) for k, v in n.annotations if k == key
    ]


def _tile_dims(buf: Buffer) -> tuple[int, int]:
    """The (row, column) dims of a WMMA accumulator: its two dims longer than 1, each a
    multiple of 16 (a paired tile [rows, 1, 1, cols] keeps unit dims for its half)."""
    long = [d for d, ext in enumerate(buf.shape) if not (isinstance(ext, Const) and ext.value == 1)]
    if len(long) != 2 or not all(
        isinstance(buf.shape[d], Const) and int(buf.shape[d].value) % 16 == 0  # type: ignore[attr-defined]
        for d in long
    ):
        raise CodegenError(f"accumulator {buf.name} must be a 2-D tile of 16 x 16 fragments")
    return long[0], long[1]
