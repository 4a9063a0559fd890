"""Work and traffic counted from the IR: FLOPs and bytes moved at given dim values."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from .dtypes import itemsize
from .expr import BinOp, BufferLoad, Call, Const, Expr, Select, Var
from .simplify import simplify
from .stmt import Block, BufferStore, PrimFunc
from .visit import substitute, walk

_COUNTED = ("add", "sub", "mul", "div", "min", "max")


def _eval_int(e: Expr, dims: Mapping[str, int]) -> int:
    mapping = {
        v: Const(int(dims[v.name]), "int64")
        for v in walk(e)
        if isinstance(v, Var) and v.name in dims
    }
    s = simplify(substitute(e, mapping))
    if not isinstance(s, Const):
        missing = sorted({v.name for v in walk(s) if isinstance(v, Var)})
        raise ValueError(f"need values for symbolic dims {', '.join(missing)}")
    return int(s.value)


def _value_ops(e: Any) -> int:
    """Arithmetic ops in a stored value; index arithmetic inside loads is not counted."""
    count = 0
    stack = [e]
    while stack:
        n = stack.pop()
        if isinstance(n, BufferLoad):
            continue
        if isinstance(n, BinOp):
            if n.op in _COUNTED:
                count += 1
            stack += [n.a, n.b]
        elif isinstance(n, Call):
            count += 1
            stack += list(n.args)
        elif isinstance(n, Select):
            stack += [n.true_value, n.false_value]
        elif hasattr(n, "value") and isinstance(n.value, Expr):
            stack.append(n.value)
    return count


def flops(func: PrimFunc, dims: Mapping[str, int], leave_out: Collection[str] = ()) -> int:
    """Sum over blocks of iteration-domain size x arithmetic ops per body (an FMA counts 2);
    blocks named in `leave_out` (work done again, not useful work) do not count."""
    total = 0
    for blk in walk(func.body):
        if not isinstance(blk, Block) or blk.name == "root" or blk.name in leave_out:
            continue
        size = 1
        for iv in blk.iter_vars:
            size *= _eval_int(iv.dom.extent, dims)
        ops = sum(_value_ops(s.value) for s in walk(blk.body) if isinstance(s, BufferStore))
        total += size * ops
    return total


def buffer_elements(shape: tuple[Expr, ...], dims: Mapping[str, int]) -> int:
    """Number of elements of a shape at the given dim values."""
    n = 1
    for s in shape:
        n *= _eval_int(s, dims)
    return n


def bytes_moved(func: PrimFunc, dims: Mapping[str, int]) -> int:
    """Bytes of all parameters (inputs read once, outputs written once) at the dim values."""
    return sum(buffer_elements(b.shape, dims) * itemsize(b.dtype) for b in func.params)
