"""Evaluate launch dimensions (grid, block, shared bytes) given as ints or expressions over dims.

Expressions are arithmetic over symbolic dim names: + - * / // % and parentheses, with
`ceildiv`, `min` and `max`; `/` is integer division as in the generated C. Parsed with `ast`,
never `eval`, since sources may come from the database.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from typing import Any


class LaunchExprError(ValueError):
    """A launch expression uses something other than integer arithmetic over known dims."""


_FUNCS = {
    "ceildiv": lambda a, b: -(-a // b),
    "min": min,
    "max": max,
}


def evaluate(expr: Any, dims: Mapping[str, int]) -> int:
    """The integer value of `expr` (an int or an expression string) with `dims` bound."""
    if isinstance(expr, int):
        return expr
    try:
        tree = ast.parse(str(expr).strip(), mode="eval")
    except SyntaxError as err:
        raise LaunchExprError(f"cannot parse launch expression {expr!r}") from err
    return _eval(tree.body, dims, str(expr))


def evaluate_all(exprs: Sequence[Any] | None, dims: Mapping[str, int]) -> tuple[int, ...]:
    """Evaluate each entry; a missing grid/block becomes (1, 1, 1) padded to three entries."""
    values = [evaluate(e, dims) for e in (exprs or ())]
    return tuple([*values, 1, 1, 1][:3])


def _eval(node: ast.AST, dims: Mapping[str, int], text: str) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in dims:
            raise LaunchExprError(f"launch expression {text!r} uses unknown dim {node.id!r}")
        return int(dims[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, dims, text)
    if isinstance(node, ast.BinOp):
        a, b = _eval(node.left, dims, text), _eval(node.right, dims, text)
        op = node.op
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div | ast.FloorDiv):
            return a // b
        if isinstance(op, ast.Mod):
            return a % b
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS:
        args = [_eval(a, dims, text) for a in node.args]
        return int(_FUNCS[node.func.id](*args))
    raise LaunchExprError(f"unsupported construct in launch expression {text!r}")
