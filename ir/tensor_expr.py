"""A small tensor-expression frontend: describe a computation, get a PrimFunc.

    x = placeholder((m, k), "float32", "x")
    w = placeholder((n, k), "float32", "w")
    r = reduce_axis(k, "r")
    y = compute((m, n), lambda i, j: sum(x[i, r] * w[j, r], r), "y")
    func = create_prim_func([x, w, y])

Tensors are compared by identity, so two tensors may share a name; create_prim_func gives
every buffer, loop and iter var a unique name. Each compute becomes one block under loops
(spatial axes outside, reduce axes inside); intermediates are allocated in the root block.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .dtypes import check_dtype, is_float
from .expr import Buffer, BufferLoad, Const, Expr, ExprLike, Var, as_expr, binop, cast, const, node
from .regions import with_regions
from .stmt import (
    TRUE,
    Block,
    BlockRealize,
    BufferStore,
    For,
    IterVar,
    PrimFunc,
    Range,
    SeqStmt,
    Stmt,
)
from .visit import free_vars, rewrite, substitute, walk


class FrontendError(ValueError):
    """A computation that cannot be turned into a PrimFunc, with the reason."""


class Tensor:
    """The result of `placeholder` or `compute`; index it to read an element."""

    def __init__(
        self, name: str, shape: tuple[Expr, ...], dtype: str, op: PlaceholderOp | ComputeOp
    ):
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.op = op

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    def __getitem__(self, indices: Any) -> TensorLoad:
        if not isinstance(indices, tuple):
            indices = (indices,)
        if len(indices) != len(self.shape):
            raise FrontendError(
                f"{self.name} has {len(self.shape)} dims, indexed with {len(indices)}"
            )
        return TensorLoad(self, tuple(as_expr(i) for i in indices))

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.dtype})"


@dataclass(frozen=True)
class PlaceholderOp:
    """Marks an input tensor."""


@dataclass(frozen=True, eq=False)
class ComputeOp:
    """How a computed tensor is defined: its axes and body."""

    axes: tuple[Var, ...]
    body: Expr  # may be a Reduce at the top


@node
@dataclass(frozen=True, repr=False)
class TensorLoad(Expr):
    """A read of a frontend Tensor (becomes a BufferLoad in create_prim_func)."""

    tensor: Tensor
    indices: tuple[Expr, ...]

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.tensor.dtype


@node
@dataclass(frozen=True, repr=False)
class ReduceAxis(Var):
    """A reduction variable over range(extent), made by `reduce_axis`."""

    extent: Expr | None = None


@node
@dataclass(frozen=True, repr=False)
class Reduce(Expr):
    """`combiner` ("sum", "max", "min") of `source` over `axes`."""

    combiner: str
    source: Expr
    axes: tuple[ReduceAxis, ...]

    @property
    def dtype(self) -> str:  # type: ignore[override]
        return self.source.dtype


def _shape(shape: Sequence[ExprLike] | ExprLike) -> tuple[Expr, ...]:
    if not isinstance(shape, list | tuple):
        shape = (shape,)
    out = []
    for s in shape:
        e = as_expr(s)
        if e.dtype != "int64":
            raise FrontendError(f"shape entries must be integers or int Vars, got {s!r}")
        out.append(e)
    return tuple(out)


def placeholder(
    shape: Sequence[ExprLike], dtype: str = "float32", name: str = "placeholder"
) -> Tensor:
    """An input tensor."""
    return Tensor(name, _shape(shape), check_dtype(dtype), PlaceholderOp())


def reduce_axis(extent: ExprLike, name: str = "k") -> ReduceAxis:
    """A reduction variable over range(extent)."""
    return ReduceAxis(name, "int64", as_expr(extent))


def _reduce(combiner: str, source: ExprLike, axis: ReduceAxis | Sequence[ReduceAxis]) -> Reduce:
    axes = (axis,) if isinstance(axis, ReduceAxis) else tuple(axis)
    if not axes or not all(isinstance(a, ReduceAxis) for a in axes):
        raise FrontendError("reductions need one or more axes made by reduce_axis()")
    return Reduce(combiner, as_expr(source), axes)


def sum(source: ExprLike, axis: ReduceAxis | Sequence[ReduceAxis]) -> Reduce:
    """Sum of `source` over the reduce axes."""
    return _reduce("sum", source, axis)


def max(source: ExprLike, axis: ReduceAxis | Sequence[ReduceAxis]) -> Reduce:
    """Maximum of `source` over the reduce axes."""
    return _reduce("max", source, axis)


def min(source: ExprLike, axis: ReduceAxis | Sequence[ReduceAxis]) -> Reduce:
    """Minimum of `source` over the reduce axes."""
    return _reduce("min", source, axis)


def compute(
    shape: Sequence[ExprLike],
    fcompute: Callable[..., ExprLike],
    name: str = "compute",
    dtype: str | None = None,
) -> Tensor:
    """A tensor whose element at the axis variables is `fcompute(*axes)`."""
    dims = _shape(shape)
    try:
        params = list(inspect.signature(fcompute).parameters)
    except (TypeError, ValueError):
        params = []
    if len(params) != len(dims):
        params = [f"i{d}" for d in range(len(dims))]
    axes = tuple(Var(p) for p in params)
    body = as_expr(fcompute(*axes))
    if isinstance(body, Reduce):
        names = [a.name for a in body.axes] + params
        if len(set(names)) != len(names):
            raise FrontendError(f"axis names must be distinct in {name!r}: {names}")
    elif any(isinstance(n, Reduce) for n in walk(body)):
        raise FrontendError(f"in {name!r} a reduction must be the whole expression of a compute")
    if dtype is not None and body.dtype != dtype:
        if isinstance(body, Reduce):
            body = Reduce(body.combiner, cast(dtype, body.source), body.axes)
        else:
            body = cast(dtype, body)
    return Tensor(name, dims, body.dtype, ComputeOp(axes, body))


# ---------------------------------------------------------------- PrimFunc construction


def simplify_stmt(s: Any) -> Any:
    """Simplify the expressions of a statement (floats only get constant folding)."""
    from .simplify import simplify

    return rewrite(
        s,
        lambda n: (
            BufferStore(n.buffer, tuple(simplify(i) for i in n.indices), simplify(n.value))
            if isinstance(n, BufferStore)
            else None
        ),
    )


class NameSupply:
    """Hands out names unique within one function (`x`, `x_1`, `x_2`, ...)."""

    def __init__(self, taken: Sequence[str] = ()):
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        """A name based on `base` not used before."""
        name, k = base, 0
        while name in self.taken:
            k += 1
            name = f"{base}_{k}"
        self.taken.add(name)
        return name


def _reduce_identity(combiner: str, dtype: str) -> Const:
    if combiner == "sum":
        return const(0, dtype)
    if is_float(dtype):
        return const(float("-inf") if combiner == "max" else float("inf"), dtype)
    limits = {"int8": 127, "int32": 2**31 - 1, "uint32": 2**32 - 1, "int64": 2**63 - 1}
    lo = {"int8": -128, "int32": -(2**31), "uint32": 0, "int64": -(2**63)}
    return const(lo[dtype] if combiner == "max" else limits[dtype], dtype)


def _deps(t: Tensor) -> list[Tensor]:
    if not isinstance(t.op, ComputeOp):
        return []
    seen: dict[int, Tensor] = {}
    for n in walk(t.op.body):
        if isinstance(n, TensorLoad):
            seen.setdefault(id(n.tensor), n.tensor)
    return list(seen.values())


def create_prim_func(tensors: Sequence[Tensor], name: str = "main") -> PrimFunc:
    """Turn placeholders (inputs, in the given order) and computes (outputs) into a PrimFunc."""
    inputs = [t for t in tensors if isinstance(t.op, PlaceholderOp)]
    outputs = [t for t in tensors if isinstance(t.op, ComputeOp)]
    if not outputs:
        raise FrontendError("create_prim_func needs at least one computed tensor as output")
    order: list[Tensor] = []
    state: dict[int, int] = {}

    def visit(t: Tensor) -> None:
        s = state.get(id(t))
        if s == 2:
            return
        if s == 1:
            raise FrontendError(f"cycle through tensor {t.name!r}")
        state[id(t)] = 1
        for d in _deps(t):
            visit(d)
        state[id(t)] = 2
        order.append(t)

    for t in outputs:
        visit(t)
    input_ids = {id(t) for t in inputs}
    for t in order:
        if isinstance(t.op, PlaceholderOp) and id(t) not in input_ids:
            raise FrontendError(f"tensor {t.name!r} is read but not listed among the inputs")

    shape_vars: dict[Var, None] = {}
    for t in order:
        for d in t.shape:
            for v in free_vars(d):
                shape_vars.setdefault(v, None)
    names = NameSupply([v.name for v in shape_vars])
    buffers: dict[int, Buffer] = {}
    for t in [*inputs, *order]:
        if id(t) not in buffers:
            buffers[id(t)] = Buffer(names.fresh(t.name), t.shape, t.dtype)

    def to_buffers(e: Any) -> Any:
        return rewrite(
            e,
            lambda n: (
                BufferLoad(buffers[id(n.tensor)], n.indices) if isinstance(n, TensorLoad) else None
            ),
        )

    output_ids = {id(t) for t in outputs}
    nests: list[Stmt] = []
    for t in order:
        if isinstance(t.op, ComputeOp):
            nests.append(_block_nest(t, buffers[id(t)], names, to_buffers))
    allocs = tuple(
        buffers[id(t)] for t in order if isinstance(t.op, ComputeOp) and id(t) not in output_ids
    )
    root = Block(
        "root",
        (),
        (),
        (),
        SeqStmt(tuple(nests)) if len(nests) > 1 else nests[0],
        alloc_buffers=allocs,
    )
    params = tuple(buffers[id(t)] for t in inputs) + tuple(buffers[id(t)] for t in outputs)
    return PrimFunc(name, params, BlockRealize((), TRUE, root), len(inputs))


def _block_nest(
    t: Tensor, out: Buffer, names: NameSupply, to_buffers: Callable[[Any], Any]
) -> Stmt:
    op = t.op
    assert isinstance(op, ComputeOp)
    body = op.body
    reduce_axes = body.axes if isinstance(body, Reduce) else ()
    loop_vars, iter_vars, values = [], [], []
    mapping: dict[Var, Expr] = {}
    for axis, extent in zip(op.axes, t.shape, strict=True):
        lv = Var(names.fresh(axis.name))
        iv = Var(names.fresh("v_" + axis.name))
        loop_vars.append((lv, extent))
        iter_vars.append(IterVar(iv, Range(const(0), extent), "spatial"))
        values.append(lv)
        mapping[axis] = iv
    for axis in reduce_axes:
        assert axis.extent is not None
        lv = Var(names.fresh(axis.name))
        iv = Var(names.fresh("v_" + axis.name))
        loop_vars.append((lv, axis.extent))
        iter_vars.append(IterVar(iv, Range(const(0), axis.extent), "reduce"))
        values.append(lv)
        mapping[axis] = iv
    index = tuple(mapping[a] for a in op.axes)
    init = None
    if isinstance(body, Reduce):
        source = to_buffers(substitute(body.source, mapping))
        acc = BufferLoad(out, index)
        combined = {
            "sum": lambda: binop("add", acc, source),
            "max": lambda: binop("max", acc, source),
            "min": lambda: binop("min", acc, source),
        }[body.combiner]()
        stmt: Stmt = BufferStore(out, index, combined)
        init = BufferStore(out, index, _reduce_identity(body.combiner, out.dtype))
    else:
        stmt = BufferStore(out, index, to_buffers(substitute(body, mapping)))
    stmt = simplify_stmt(stmt)
    init = None if init is None else simplify_stmt(init)
    block = with_regions(Block(out.name, tuple(iter_vars), (), (), stmt, init))
    nest: Stmt = BlockRealize(tuple(values), TRUE, block)
    for lv, extent in reversed(loop_vars):
        nest = For(lv, extent, nest)
    return nest
