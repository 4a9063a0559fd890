"""Generic traversal of IR nodes: rewriting, substitution and collection.

Every node is a frozen dataclass, so one field-driven walker serves all node kinds (tinygrad's
lesson: one node family, rewrites as small functions). Buffers are leaves unless asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from .expr import Buffer, Expr, Var

_FIELDS: dict[type, tuple[str, ...]] = {}


def fields_of(cls: type) -> tuple[str, ...]:
    """Field names of a node class (cached)."""
    names = _FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        _FIELDS[cls] = names
    return names


_CHILDREN: dict[type, tuple[str, ...]] = {}
# field annotations that never hold a node: traversal skips them
_LEAF_FIELDS = frozenset(
    {"str", "int", "float", "bool", "int | float | bool", "str | None", "tuple[str, ...]"}
)


def child_fields(cls: type) -> tuple[str, ...]:
    """Field names of a node class that may hold nodes or tuples of them (cached): strings,
    numbers and flags are left out, so walks and rewrites never visit them."""
    names = _CHILDREN.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.type not in _LEAF_FIELDS)
        _CHILDREN[cls] = names
    return names


_IS_NODE: dict[type, bool] = {}


def _is_node(value: Any) -> bool:
    cls = type(value)
    known = _IS_NODE.get(cls)
    if known is None:
        known = _IS_NODE[cls] = dataclasses.is_dataclass(cls) and cls is not type
    return known


def rewrite(
    root: Any,
    post: Callable[[Any], Any | None],
    into_buffers: bool = False,
) -> Any:
    """Rebuild `root` bottom-up; `post(node)` returns a replacement or None to keep the node."""
    memo: dict[int, Any] = {}

    def visit(value: Any) -> Any:
        if isinstance(value, tuple):
            new = tuple(visit(v) for v in value)
            return value if all(a is b for a, b in zip(new, value, strict=True)) else new
        if not _is_node(value):
            return value
        if isinstance(value, Buffer) and not into_buffers:
            out = post(value)
            return value if out is None else out
        key = id(value)
        if key in memo:
            return memo[key]
        changes = {}
        for name in child_fields(type(value)):
            old = getattr(value, name)
            new = visit(old)
            if new is not old:
                changes[name] = new
        node = dataclasses.replace(value, **changes) if changes else value
        out = post(node)
        result = node if out is None else out
        memo[key] = result
        return result

    return visit(root)


def substitute(root: Any, mapping: Mapping[Var, Expr]) -> Any:
    """Replace variables by expressions everywhere in `root` (buffers left alone)."""
    if not mapping:
        return root
    return rewrite(root, lambda n: mapping.get(n) if isinstance(n, Var) else None)


def walk(root: Any, into_buffers: bool = False) -> Iterator[Any]:
    """Yield every node of `root` in pre-order."""
    stack = [root]
    while stack:
        value = stack.pop()
        if isinstance(value, tuple):
            stack.extend(reversed(value))
            continue
        if not _is_node(value):
            continue
        yield value
        if isinstance(value, Buffer) and not into_buffers:
            continue
        stack.extend(reversed([getattr(value, f) for f in child_fields(type(value))]))


def free_vars(root: Any) -> list[Var]:
    """Variables used in `root`, in order of first appearance, without duplicates."""
    seen: dict[Var, None] = {}
    for n in walk(root):
        if isinstance(n, Var):
            seen.setdefault(n, None)
    return list(seen)


def uses_var(root: Any, var: Var) -> bool:
    """True when `var` occurs in `root`."""
    return any(n == var for n in walk(root) if isinstance(n, Var))


def contains_expr(root: Any, kind: type) -> bool:
    """True when a node of type `kind` occurs in `root`."""
    return any(isinstance(n, kind) for n in walk(root))


C = TypeVar("C")


def descend(s: Any, ctx: C, visit: Callable[[Any, C], Any]) -> Any | None:
    """`s` rebuilt with `visit(child, ctx)` applied to what it holds, when `s` is a statement
    that only holds others (a sequence, an if, an allocation); None for any other statement.

    Lowering passes call it first and handle loops and leaves themselves.
    """
    from .stmt import Allocate, IfThenElse, SeqStmt

    if isinstance(s, SeqStmt):
        return SeqStmt(tuple(visit(c, ctx) for c in s.stmts))
    if isinstance(s, IfThenElse):
        other = None if s.else_case is None else visit(s.else_case, ctx)
        return dataclasses.replace(s, then_case=visit(s.then_case, ctx), else_case=other)
    if isinstance(s, Allocate):
        return dataclasses.replace(s, body=visit(s.body, ctx))
    return None
