"""Expression nodes: immutable, hashable, compared structurally.

One small family (Var, Const, BinOp, Select, Cast, Call, BufferLoad) covers index arithmetic,
element values and predicates. Python operators build nodes; `==` stays structural equality so
nodes work as dict keys, and `eq`/`ne` build comparisons instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from .dtypes import DTypeError, check_dtype, is_float, is_int, promote

# Binary operator names. Comparisons and logic give "bool"; shifts keep the left dtype.
ARITH_OPS = ("add", "sub", "mul", "div", "floordiv", "floormod", "min", "max")
BIT_OPS = ("shr", "shl", "bitand", "bitor")
CMP_OPS = ("lt", "le", "gt", "ge", "eq", "ne")
LOGIC_OPS = ("and", "or")
BINARY_OPS = ARITH_OPS + BIT_OPS + CMP_OPS + LOGIC_OPS
# the value a reduction's combiner starts from, `x op identity == x` (lowering checks inits
# against it, masks give it where a step adds nothing, the interpreter fills with it)
REDUCE_IDENTITY: dict[str, float] = {"add": 0.0, "max": float("-inf"), "min": float("inf")}
INTRINSICS = ("exp", "log", "sqrt", "rsqrt", "erf", "tanh", "abs", "sigmoid", "not")

NODE_TYPES: dict[str, type] = {}


def node(cls: type) -> type:
    """Register a node class by name so JSON can rebuild it."""
    NODE_TYPES[cls.__name__] = cls
    return cls


ExprLike = Union["Expr", int, float, bool]


class Expr:
    """Base of expression nodes; subclasses are frozen dataclasses with a `dtype`."""

    dtype: str

    def __add__(self, o: ExprLike) -> Expr:
        return binop("add", self, o)

    def __radd__(self, o: ExprLike) -> Expr:
        return binop("add", o, self)

    def __sub__(self, o: ExprLike) -> Expr:
        return binop("sub", self, o)

    def __rsub__(self, o: ExprLike) -> Expr:
        return binop("sub", o, self)

    def __mul__(self, o: ExprLike) -> Expr:
        return binop("mul", self, o)

    def __rmul__(self, o: ExprLike) -> Expr:
        return binop("mul", o, self)

    def __truediv__(self, o: ExprLike) -> Expr:
        return binop("div", self, o)

    def __rtruediv__(self, o: ExprLike) -> Expr:
        return binop("div", o, self)

    def __floordiv__(self, o: ExprLike) -> Expr:
        return binop("floordiv", self, o)

    def __rfloordiv__(self, o: ExprLike) -> Expr:
        return binop("floordiv", o, self)

    def __mod__(self, o: ExprLike) -> Expr:
        return binop("floormod", self, o)

    def __rmod__(self, o: ExprLike) -> Expr:
        return binop("floormod", o, self)

    def __neg__(self) -> Expr:
        return binop("sub", const(0, self.dtype), self)

    def __lt__(self, o: ExprLike) -> Expr:
        return binop("lt", self, o)

    def __le__(self, o: ExprLike) -> Expr:
        return binop("le", self, o)

    def __gt__(self, o: ExprLike) -> Expr:
        return binop("gt", self, o)

    def __ge__(self, o: ExprLike) -> Expr:
        return binop("ge", self, o)

    def __rshift__(self, o: ExprLike) -> Expr:
        return binop("shr", self, o)

    def __lshift__(self, o: ExprLike) -> Expr:
        return binop("shl", self, o)

    def __and__(self, o: ExprLike) -> Expr:
        return binop("and" if self.dtype == "bool" else "bitand", self, o)

    def __or__(self, o: ExprLike) -> Expr:
        return binop("or" if self.dtype == "bool" else "bitor", self, o)

    def __bool__(self) -> bool:
        raise TypeError("an IR expression has no truth value; build a comparison or use select()")

    def __str__(self) -> str:
        from .printer import expr_str

        return expr_str(self)


@node
@dataclass(frozen=True, eq=True, repr=False)
class Var(Expr):
    """A named integer variable: a symbolic shape dim, a loop variable or a block iter var."""

    name: str
    dtype: str = "int64"

    def __repr__(self) -> str:
        return f"Var({self.name!r})"


@node
@dataclass(frozen=True, eq=True, repr=False)
class Const(Expr):
    """A literal of a given dtype."""

    value: int | float | bool
    dtype: str = "int64"

    def __repr__(self) -> str:
        return f"Const({self.value!r}, {self.dtype!r})"


@node
@dataclass(frozen=True, eq=True, repr=False)
class BinOp(Expr):
    """A binary operation `op` (one of BINARY_OPS) on two operands."""

    op: str
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:  # type: ignore[override]
        if self.op in CMP_OPS or self.op in LOGIC_OPS:
            return "bool"
        if self.op in BIT_OPS:
            return self.a.dtype
        return promote(self.a.dtype, self.b.dtype)

    def __repr__(self) -> str:
        return f"BinOp({self.op!r}, {self.a!r}, {self.b!r})"


@node
@dataclass(frozen=True, eq=True, repr=False)
class Select(Expr):
    """`cond ? true_value : false_value`; only the chosen side is evaluated in generated code."""

    cond: Expr
    true_value: Expr
    false_value: Expr

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return promote(self.true_value.dtype, self.false_value.dtype)

    def __repr__(self) -> str:
        return f"Select({self.cond!r}, {self.true_value!r}, {self.false_value!r})"


@node
@dataclass(frozen=True, eq=True, repr=False)
class Cast(Expr):
    """Convert `value` to `dtype`."""

    dtype: str
    value: Expr

    def __repr__(self) -> str:
        return f"Cast({self.dtype!r}, {self.value!r})"


@node
@dataclass(frozen=True, eq=True, repr=False)
class Call(Expr):
    """A math intrinsic (one of INTRINSICS) applied elementwise."""

    op: str
    args: tuple[Expr, ...]
    dtype: str

    def __repr__(self) -> str:
        return f"Call({self.op!r}, {self.args!r})"


@node
@dataclass(frozen=True, eq=True)
class Buffer:
    """A multi-dimensional array: shape of expressions, element dtype and memory scope.

    Scopes: "global" (function arguments and intermediates in main memory), "shared" and
    "local" (per-thread-block and per-thread storage), and tensor-core fragments
    "wmma.matrix_a", "wmma.matrix_b", "wmma.accumulator" (WMMA API fragments) and
    "mma.matrix_a", "mma.matrix_b", "mma.accumulator" (per-lane registers of mma.sync);
    "wgmma.accumulator" (per-thread registers of a Hopper warpgroup MMA).
    """

    name: str
    shape: tuple[Expr, ...]
    dtype: str = "float32"
    scope: str = "global"

    def __getitem__(self, indices: Any) -> BufferLoad:
        if not isinstance(indices, tuple):
            indices = (indices,)
        return BufferLoad(self, tuple(as_expr(i) for i in indices))

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, {self.dtype})"


SCOPES = (
    "global",
    "shared",
    "shared.cluster",
    "local",
    "wmma.matrix_a",
    "wmma.matrix_b",
    "wmma.accumulator",
    "mma.matrix_a",
    "mma.matrix_b",
    "mma.accumulator",
    "wgmma.accumulator",
)


@node
@dataclass(frozen=True, eq=True, repr=False)
class BufferLoad(Expr):
    """Read one element of a buffer."""

    buffer: Buffer
    indices: tuple[Expr, ...]

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.buffer.dtype

    def __repr__(self) -> str:
        return f"BufferLoad({self.buffer.name}, {self.indices!r})"


def const(value: int | float | bool, dtype: str | None = None) -> Const:
    """A literal; the dtype defaults to int64 for ints, float32 for floats, bool for bools."""
    if dtype is None:
        dtype = (
            "bool" if isinstance(value, bool) else "int64" if isinstance(value, int) else "float32"
        )
    check_dtype(dtype)
    if is_float(dtype):
        value = float(value)
    elif dtype == "bool":
        value = bool(value)
    elif isinstance(value, float):
        if not value.is_integer():
            raise DTypeError(f"{value} is not an integer value for dtype {dtype}")
        value = int(value)
    return Const(value, dtype)


def as_expr(value: ExprLike, like: str | None = None) -> Expr:
    """Turn a Python number into a Const (of dtype `like` when given); pass Exprs through."""
    if isinstance(value, Expr):
        return value
    if isinstance(value, bool):
        return const(value, "bool")
    if isinstance(value, int):
        return const(value, like if like is not None else "int64")
    if isinstance(value, float):
        if like is not None and is_int(like):
            return const(value, "float32")
        return const(value, like if like is not None else "float32")
    if hasattr(value, "__index__"):
        return const(int(value), like if like is not None else "int64")
    raise TypeError(f"cannot use {type(value).__name__} {value!r} as an IR expression")


def binop(op: str, a: ExprLike, b: ExprLike) -> Expr:
    """Build a binary node, turning Python numbers into constants of the other side's dtype."""
    if op not in BINARY_OPS:
        raise ValueError(f"unknown binary op {op!r}")
    if not isinstance(a, Expr) and not isinstance(b, Expr):
        a = as_expr(a)
    if not isinstance(a, Expr):
        a = as_expr(a, _numeric_like(b))  # type: ignore[union-attr]
    if not isinstance(b, Expr):
        b = as_expr(b, _numeric_like(a))
    if op == "div" and not (is_float(a.dtype) or is_float(b.dtype)):
        raise DTypeError("'/' on integers is ambiguous; use // (floordiv) or cast to a float")
    return BinOp(op, a, b)


def _numeric_like(e: Expr) -> str | None:
    return None if e.dtype == "bool" else e.dtype


def floordiv(a: ExprLike, b: ExprLike) -> Expr:
    """Floor division (rounds toward negative infinity)."""
    return binop("floordiv", a, b)


def floormod(a: ExprLike, b: ExprLike) -> Expr:
    """The remainder of floordiv (same sign as the divisor)."""
    return binop("floormod", a, b)


def min_(a: ExprLike, b: ExprLike) -> Expr:
    """Elementwise minimum."""
    return binop("min", a, b)


def max_(a: ExprLike, b: ExprLike) -> Expr:
    """Elementwise maximum."""
    return binop("max", a, b)


def eq(a: ExprLike, b: ExprLike) -> Expr:
    """The comparison a == b (`==` itself is structural equality)."""
    return binop("eq", a, b)


def ne(a: ExprLike, b: ExprLike) -> Expr:
    """The comparison a != b."""
    return binop("ne", a, b)


def logical_and(a: ExprLike, b: ExprLike) -> Expr:
    """Boolean and."""
    return binop("and", a, b)


def logical_or(a: ExprLike, b: ExprLike) -> Expr:
    """Boolean or."""
    return binop("or", a, b)


def select(cond: Expr, true_value: ExprLike, false_value: ExprLike) -> Expr:
    """A conditional value."""
    if isinstance(true_value, Expr):
        fv = as_expr(false_value, true_value.dtype)
        tv = true_value
    else:
        fv = as_expr(false_value)
        tv = as_expr(true_value, fv.dtype)
    return Select(cond, tv, fv)


def cast(dtype: str, value: ExprLike) -> Expr:
    """Convert to `dtype`; a no-op when the value already has it."""
    check_dtype(dtype)
    e = as_expr(value, dtype)
    return e if e.dtype == dtype else Cast(dtype, e)


def _intrinsic(op: str):
    def make(x: ExprLike) -> Expr:
        e = as_expr(x)
        if op != "not" and not is_float(e.dtype) and op != "abs":
            raise DTypeError(f"{op} needs a float operand, got {e.dtype}")
        return Call(op, (e,), e.dtype)

    make.__name__ = op
    make.__doc__ = f"The elementwise `{op}` intrinsic."
    return make


exp = _intrinsic("exp")
log = _intrinsic("log")
sqrt = _intrinsic("sqrt")
rsqrt = _intrinsic("rsqrt")
erf = _intrinsic("erf")
tanh = _intrinsic("tanh")
abs_ = _intrinsic("abs")
sigmoid = _intrinsic("sigmoid")


def is_const(e: Expr, value: int | float | None = None) -> bool:
    """True for a Const (equal to `value` when given)."""
    return isinstance(e, Const) and (value is None or e.value == value)


def float_value(value: float) -> float:
    """Normalise a float literal (keeps inf/nan)."""
    return float(value) if math.isfinite(value) else value
