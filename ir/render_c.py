"""Table-driven C-style source renderers: a base shared by C and (later) CUDA C, and the C one.

The base walks a lowered PrimFunc and looks every operator, type and intrinsic up in class
tables, so a backend is a subclass that overrides a few tables and hooks (kernel prefix, how
loops are annotated, how thread-bound loops become thread indices). bfloat16 is stored as
uint16_t and widened to float for arithmetic; float16 uses _Float16.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

from .annotation_keys import HOISTED_CALLS
from .dtypes import is_float
from .errors import CodegenError
from .expr import BinOp, Buffer, BufferLoad, Call, Cast, Const, Expr, Select, Var
from .schedule_tree import reduction_update
from .simplify import simplify
from .stmt import Allocate, BufferStore, For, IfThenElse, PipelineSync, PrimFunc, SeqStmt, Stmt
from .visit import walk

_C_KEYWORDS = frozenset(
    "auto break case char const continue default do double else enum extern float for goto if "
    "inline int long register restrict return short signed sizeof static struct switch typedef "
    "union unsigned void volatile while main exp log sqrt erf tanh abs free malloc".split()
)

PRELUDE_C = r"""#include <stdint.h>
#include <stdlib.h>
#include <math.h>

static inline float tf_bf16_to_f32(uint16_t v) {
  uint32_t u = ((uint32_t)v) << 16; float f; __builtin_memcpy(&f, &u, 4); return f;
}
static inline uint16_t tf_f32_to_bf16(float f) {
  uint32_t u; __builtin_memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16);
}
static inline int64_t tf_floordiv(int64_t a, int64_t b) {
  int64_t q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
static inline int64_t tf_floormod(int64_t a, int64_t b) {
  int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
"""


def c_name(name: str) -> str:
    """A C identifier for an IR name."""
    s = re.sub(r"[^0-9A-Za-z_]", "_", name)
    if not s or s[0].isdigit():
        s = "_" + s
    return s + "_" if s in _C_KEYWORDS else s


def buffer_elements(buf: Buffer) -> Expr:
    """The number of elements of `buf`, simplified (a Const when its shape is constant)."""
    size: Expr = Const(1, "int64")
    for d in buf.shape:
        size = size * d
    return simplify(size)


class CStyleRenderer:
    """Renders a lowered PrimFunc as one C-like function; subclasses override the tables."""

    lang: ClassVar[str] = "c"
    prelude: ClassVar[str] = PRELUDE_C
    kernel_prefix: ClassVar[str] = "void"
    restrict: ClassVar[str] = "__restrict__"
    types: ClassVar[dict[str, str]] = {
        "float32": "float",
        "float16": "_Float16",
        "bfloat16": "uint16_t",
        "int8": "int8_t",
        "int32": "int32_t",
        "uint32": "uint32_t",
        "int64": "int64_t",
        "bool": "int",
    }
    infix: ClassVar[dict[str, str]] = {
        "add": "+",
        "sub": "-",
        "mul": "*",
        "div": "/",
        "lt": "<",
        "le": "<=",
        "gt": ">",
        "ge": ">=",
        "eq": "==",
        "ne": "!=",
        "and": "&&",
        "or": "||",
        "shr": ">>",
        "shl": "<<",
        "bitand": "&",
        "bitor": "|",
    }
    float_intrinsics: ClassVar[dict[str, str]] = {
        "exp": "expf({0})",
        "log": "logf({0})",
        "sqrt": "sqrtf({0})",
        "rsqrt": "(1.0f / sqrtf({0}))",
        "erf": "erff({0})",
        "tanh": "tanhf({0})",
        "abs": "fabsf({0})",
        "sigmoid": "(1.0f / (1.0f + expf(-({0}))))",
    }
    stack_limit_bytes: ClassVar[int] = 64 * 1024
    max_unroll: ClassVar[int] = 32  # per unrolled loop
    max_unroll_product: ClassVar[int] = 256  # over nested unrolled loops

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._parallel_depth = 0
        self._simd_depth = 0
        self._unroll_product = 1

    # ------------------------------------------------------------ expressions

    def ctype(self, dtype: str) -> str:
        """The C type of an element type."""
        return self.types[dtype]

    def const(self, c: Const) -> str:
        """A literal in C syntax."""
        v = c.value
        if c.dtype == "bool":
            return "1" if v else "0"
        if is_float(c.dtype):
            f = float(v)
            if math.isinf(f):
                text = "INFINITY" if f > 0 else "(-INFINITY)"
            elif math.isnan(f):
                text = "NAN"
            else:
                text = f"{f!r}f" if ("e" in repr(f) or "." in repr(f)) else f"{f!r}.0f"
            if c.dtype == "float32":
                return text
            return self.from_float(text, c.dtype)
        if c.dtype == "uint32":
            return f"{int(v)}u"
        if c.dtype == "int64" and not (-(2**31) <= int(v) < 2**31):
            return f"{int(v)}LL"
        return str(int(v))

    def to_float(self, text: str, dtype: str) -> str:
        """Widen a value of `dtype` to float for arithmetic."""
        if dtype == "bfloat16":
            return f"tf_bf16_to_f32({text})"
        if dtype == "float32":
            return text
        return f"((float)({text}))"

    def from_float(self, text: str, dtype: str) -> str:
        """Narrow a float to `dtype`."""
        if dtype == "bfloat16":
            return f"tf_f32_to_bf16({text})"
        if dtype == "float32":
            return text
        return f"(({self.ctype(dtype)})({text}))"

    def expr(self, e: Expr) -> str:
        """An expression in C syntax."""
        if isinstance(e, Var):
            return c_name(e.name)
        if isinstance(e, Const):
            return self.const(e)
        if isinstance(e, BufferLoad):
            return f"{c_name(e.buffer.name)}[{self.flat_index(e.buffer, e.indices)}]"
        if isinstance(e, Cast):
            return self.cast(e)
        if isinstance(e, Select):
            return f"({self.expr(e.cond)} ? {self.expr(e.true_value)} : {self.expr(e.false_value)})"
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, BinOp):
            return self.binop(e)
        raise CodegenError(f"cannot render {type(e).__name__} in {self.lang}")

    def cast(self, e: Cast) -> str:
        """A conversion, through float for bfloat16."""
        src, dst = e.value.dtype, e.dtype
        inner = self.expr(e.value)
        if src == "bfloat16" or dst == "bfloat16":
            widened = self.to_float(inner, src) if is_float(src) else f"((float)({inner}))"
            return (
                self.from_float(widened, dst)
                if is_float(dst)
                else f"(({self.ctype(dst)})({widened}))"
            )
        return f"(({self.ctype(dst)})({inner}))"

    def call(self, e: Call) -> str:
        """A math intrinsic, computed in float."""
        fmt = self.float_intrinsics.get(e.op)
        if e.op == "not":
            return f"(!({self.expr(e.args[0])}))"
        if fmt is None:
            raise CodegenError(f"intrinsic {e.op!r} has no {self.lang} spelling")
        arg = e.args[0]
        text = fmt.format(self.to_float(self.expr(arg), arg.dtype))
        return self.from_float(text, e.dtype) if e.dtype != "float32" else text

    def binop(self, e: BinOp) -> str:
        """A binary operation (bfloat16 operands are widened)."""
        a, b = e.a, e.b
        if e.dtype == "bfloat16" or (
            e.op in ("lt", "le", "gt", "ge", "eq", "ne") and a.dtype == "bfloat16"
        ):
            sa, sb = self.to_float(self.expr(a), a.dtype), self.to_float(self.expr(b), b.dtype)
            text = self._binop_text(e.op, sa, sb, "float32")
            return self.from_float(text, "bfloat16") if e.dtype == "bfloat16" else text
        return self._binop_text(e.op, self.expr(a), self.expr(b), e.dtype, a, b)

    def _binop_text(
        self, op: str, sa: str, sb: str, dtype: str, a: Expr | None = None, b: Expr | None = None
    ) -> str:
        if op in ("min", "max"):
            cmp = "<" if op == "min" else ">"
            return f"(({sa}) {cmp} ({sb}) ? ({sa}) : ({sb}))"
        if op in ("floordiv", "floormod"):
            if is_float(dtype):
                return (
                    f"floorf({sa} / {sb})"
                    if op == "floordiv"
                    else f"({sa} - floorf({sa} / {sb}) * {sb})"
                )
            if a is not None and b is not None and _nonneg(a) and _nonneg(b):
                return f"({sa} {'/' if op == 'floordiv' else '%'} {sb})"
            return f"tf_{op}({sa}, {sb})"
        return f"({sa} {self.infix[op]} {sb})"

    def flat_index(self, buf: Buffer, indices: tuple[Expr, ...]) -> str:
        """The row-major flat index of a multi-dimensional access."""
        if len(indices) != len(buf.shape):
            raise CodegenError(
                f"{buf.name} has {len(buf.shape)} dims, accessed with {len(indices)}"
            )
        flat: Expr | None = None
        for idx, dim in zip(indices, buf.shape, strict=True):
            flat = idx if flat is None else flat * dim + idx
        return self.expr(simplify(flat)) if flat is not None else "0"

    # ------------------------------------------------------------ statements

    def emit(self, line: str, depth: int) -> None:
        """Append one line at the given depth."""
        self._lines.append("  " * depth + line)

    def stmt(self, s: Stmt, depth: int) -> None:
        """Render a lowered statement."""
        if isinstance(s, SeqStmt):
            for c in s.stmts:
                self.stmt(c, depth)
        elif isinstance(s, For):
            self.loop(s, depth)
        elif isinstance(s, IfThenElse):
            self.emit(f"if ({self.expr(s.cond)}) {{", depth)
            self.stmt(s.then_case, depth + 1)
            if s.else_case is not None:
                self.emit("} else {", depth)
                self.stmt(s.else_case, depth + 1)
            self.emit("}", depth)
        elif isinstance(s, BufferStore):
            target = f"{c_name(s.buffer.name)}[{self.flat_index(s.buffer, s.indices)}]"
            self.emit(f"{target} = {self.store_value(s)};", depth)
        elif isinstance(s, Allocate):
            self.allocate(s, depth)
        elif isinstance(s, PipelineSync):
            pass  # copies are synchronous here; the CUDA renderer emits cp.async groups
        else:
            raise CodegenError(f"cannot render {type(s).__name__}; lower the function first")

    def store_value(self, s: BufferStore) -> str:
        """The value of a store, checked against the buffer's dtype."""
        v = s.value
        if v.dtype != s.buffer.dtype:
            raise CodegenError(
                f"storing {v.dtype} into {s.buffer.dtype} buffer {s.buffer.name}; add a cast"
            )
        return self.expr(v)

    def loop_pragmas(self, s: For) -> list[str]:
        """Pragmas that carry the loop kind to the compiler."""
        if self._simd_depth:
            return []  # no OpenMP construct may nest inside a simd loop
        if s.kind == "parallel" and self._parallel_depth == 0:
            return ["#pragma omp parallel for schedule(static)"]
        if s.kind == "vectorized" and not any(isinstance(n, For) for n in walk(s.body)):
            return ["#pragma omp simd"]
        if s.kind == "unrolled":
            n = int(s.extent.value) if isinstance(s.extent, Const) else 8
            n = max(1, min(n, self.max_unroll))
            if self._unroll_product * n > self.max_unroll_product:
                return []  # nested unrolling would blow up compile time
            return [f"#pragma GCC unroll {n}"]
        return []

    def loop(self, s: For, depth: int) -> None:
        """Render a loop with its pragmas."""
        if s.kind == "thread_binding":
            raise CodegenError(
                f"loop {s.var.name} is bound to {s.thread}; thread-bound loops need the cuda target"
            )
        if s.kind == "vectorized" and not self._simd_depth and self.simd_reduction(s, depth):
            return
        pragmas = self.loop_pragmas(s)
        if s.kind == "vectorized" and _carries_store(s):
            pragmas = [p for p in pragmas if "simd" not in p]  # a loop-carried store: keep order
        for p in pragmas:
            self.emit(p, depth)
        v = c_name(s.var.name)
        self.emit(f"for (int64_t {v} = 0; {v} < {self.expr(s.extent)}; ++{v}) {{", depth)
        par, simd = s.kind == "parallel", s.kind == "vectorized"
        unroll = 1
        if s.kind == "unrolled" and isinstance(s.extent, Const):
            unroll = max(1, min(int(s.extent.value), self.max_unroll))
        self._parallel_depth += par
        self._simd_depth += simd
        self._unroll_product *= unroll
        self.stmt(s.body, depth + 1)
        self._parallel_depth -= par
        self._simd_depth -= simd
        self._unroll_product //= unroll
        self.emit("}", depth)

    def simd_reduction(self, s: For, depth: int) -> bool:
        """Render `for k: C[i] = C[i] op e` as an OpenMP simd reduction into a scalar.

        The accumulator lives in a register across the loop and the compiler may reassociate
        the sum (that is what vectorizing a reduction means). False when the loop is not of
        that form (or guarded by anything but its own condition).
        """
        body, cond = s.body, None
        if isinstance(body, IfThenElse) and body.else_case is None:
            body, cond = body.then_case, body.cond
        if not isinstance(body, BufferStore):
            return False
        found = reduction_update(body)
        if (
            found is None
            or body.buffer.dtype not in ("float32", "int32", "int64")
            or any(n == s.var for i in body.indices for n in walk(i))
        ):
            return False
        op, rhs = found
        acc = f"{c_name(body.buffer.name)}_acc_{c_name(s.var.name)}"
        target = f"{c_name(body.buffer.name)}[{self.flat_index(body.buffer, body.indices)}]"
        update = self._binop_text(op, acc, self.expr(rhs), body.buffer.dtype)
        if cond is not None:
            update = f"({self.expr(cond)} ? {update} : {acc})"
        loop_var = c_name(s.var.name)
        self.emit("{", depth)
        self.emit(f"{self.ctype(body.buffer.dtype)} {acc} = {target};", depth + 1)
        self.emit(f"#pragma omp simd reduction({_OMP_REDUCTION[op]}:{acc})", depth + 1)
        self.emit(
            f"for (int64_t {loop_var} = 0; {loop_var} < {self.expr(s.extent)}; ++{loop_var}) {{",
            depth + 1,
        )
        self.emit(f"{acc} = {update};", depth + 2)
        self.emit("}", depth + 1)
        self.emit(f"{target} = {acc};", depth + 1)
        self.emit("}", depth)
        return True

    def allocate(self, s: Allocate, depth: int) -> None:
        """Stack storage for small constant sizes, aligned heap storage otherwise."""
        buf = s.buffer
        size = buffer_elements(buf)
        ct, name = self.ctype(buf.dtype), c_name(buf.name)
        from .dtypes import itemsize

        if (
            isinstance(size, Const)
            and int(size.value) * itemsize(buf.dtype) <= self.stack_limit_bytes
        ):
            self.emit(f"{ct} {name}[{int(size.value)}] __attribute__((aligned(64)));", depth)
            self.stmt(s.body, depth)
            return
        bytes_expr = f"((sizeof({ct}) * (size_t)({self.expr(size)}) + 63) / 64 * 64)"
        self.emit(f"{ct}* {name} = ({ct}*)aligned_alloc(64, {bytes_expr});", depth)
        self.stmt(s.body, depth)
        self.emit(f"free({name});", depth)

    # ------------------------------------------------------------ function

    def signature(self, func: PrimFunc, entry: str, scalars: tuple[Var, ...]) -> str:
        """The kernel's C signature: buffers, then symbolic dims."""
        args = [f"{self.ctype(b.dtype)}* {self.restrict} {c_name(b.name)}" for b in func.params]
        args += [f"int64_t {c_name(v.name)}" for v in scalars]
        return f"{self.kernel_prefix} {entry}({', '.join(args)})"

    def render(self, lowered: PrimFunc, entry: str, scalars: tuple[Var, ...]) -> str:
        """One complete translation unit holding the kernel `entry`."""
        self._lines = []
        self._parallel_depth = 0
        self._simd_depth = 0
        self._unroll_product = 1
        self.stmt(lowered.body, 1)
        body = "\n".join(self._lines)
        return f"{self.prelude}\n{self.signature(lowered, entry, scalars)} {{\n{body}\n}}\n"


# exp(x) = 2^n * e^r with n = round(x / ln 2) and |r| <= ln(2)/2, branch-free so that gcc
# vectorizes it inside `omp simd` loops (libm's expf stays a scalar call without -ffast-math).
# n is rounded by adding 1.5 * 2^23 and read back from the float's bits (no float-to-int
# conversion, so NaN is never converted); r is x - n ln 2 with ln 2 split in two (the high part
# has 9 trailing zero bits, so n * hi is exact for |n| <= 150); e^r is its degree-7 Taylor
# polynomial (truncation below 1e-8 relative on that range); 2^n is built from exponent bits
# as two factors 2^(n>>1) * 2^(n - (n>>1)), so results down to the smallest subnormal round
# once and x near 88.72 overflows to inf as expf does. x is clamped to [-104, 89] first (its
# result there is already 0 or inf); NaN in gives NaN out, -inf gives 0, +inf gives inf.
EXP_C = r"""static inline float tf_expf(float x) {
  float xs = x == x ? x : 0.0f;
  xs = xs < -104.0f ? -104.0f : xs;
  xs = xs > 89.0f ? 89.0f : xs;
  float t = xs * 1.44269504088896341f + 12582912.0f;
  float n = t - 12582912.0f;
  int32_t tb; __builtin_memcpy(&tb, &t, 4);
  int32_t ni = tb - 0x4b400000;
  float r = xs - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-06f;
  float p = 1.98412698e-4f;
  p = p * r + 1.38888889e-3f;
  p = p * r + 8.33333333e-3f;
  p = p * r + 4.16666667e-2f;
  p = p * r + 1.66666667e-1f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t n1 = ni >> 1, n2 = ni - n1;
  uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
  float s1, s2; __builtin_memcpy(&s1, &b1, 4); __builtin_memcpy(&s2, &b2, 4);
  float y = (p * s1) * s2;
  return x == x ? y : x + x;
}
"""


class CRenderer(CStyleRenderer):
    """Plain C for the CPU: OpenMP for parallel loops, `omp simd` for vectorised ones.

    exp (and sigmoid, silu, anything built on it) calls `tf_expf` from the prelude instead of
    libm's expf, so exp-heavy loops such as softmax's vectorize.
    """

    prelude: ClassVar[str] = PRELUDE_C + EXP_C
    float_intrinsics: ClassVar[dict[str, str]] = {
        **CStyleRenderer.float_intrinsics,
        "exp": "tf_expf({0})",
        "sigmoid": "(1.0f / (1.0f + tf_expf(-({0}))))",
    }

    def __init__(self) -> None:
        super().__init__()
        self._hoisted: dict[Call, str] = {}
        self._hoist_count = 0

    def render(self, lowered: PrimFunc, entry: str, scalars: tuple[Var, ...]) -> str:
        self._hoisted = {}
        self._hoist_count = 0
        return super().render(lowered, entry, scalars)

    def call(self, e: Call) -> str:
        name = self._hoisted.get(e)
        return name if name is not None else super().call(e)

    def loop(self, s: For, depth: int) -> None:
        """Compute the loop-invariant math calls its `hoisted_calls` annotation names once,
        before the loop (pass_hoist.hoist_invariant_calls decided which)."""
        added = []
        for c in dict(s.annotations).get(HOISTED_CALLS, ()):
            name = f"tf_inv{self._hoist_count}"
            self._hoist_count += 1
            self.emit(f"const float {name} = {self.call(c)};", depth)
            self._hoisted[c] = name
            added.append(c)
        super().loop(s, depth)
        for c in added:
            del self._hoisted[c]


_OMP_REDUCTION = {"add": "+", "max": "max", "min": "min"}


def _carries_store(s: For) -> bool:
    """True when some store in the loop writes the same element on every iteration."""
    return any(
        isinstance(n, BufferStore) and not any(m == s.var for i in n.indices for m in walk(i))
        for n in walk(s.body)
    )


def _nonneg(e: Expr) -> bool:
    """Loop, block and shape variables are never negative; so are sums/products of them."""
    if isinstance(e, Var):
        return True
    if isinstance(e, Const):
        return not isinstance(e.value, bool) and e.value >= 0
    if isinstance(e, BinOp) and e.op in (
        "add",
        "mul",
        "floordiv",
        "floormod",
        "min",
        "max",
        "shr",
        "bitand",
    ):
        return _nonneg(e.a) and _nonneg(e.b)
    if isinstance(e, Cast):
        return _nonneg(e.value)
    return False
