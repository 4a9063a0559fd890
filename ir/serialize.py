"""JSON serialisation of IR nodes and the structural hash (the workload key).

Nodes are written as {"node": ClassName, field: value, ...}; tuples become lists and
non-finite floats are spelled out, so `from_json(to_json(x)) == x`. The structural hash writes
the same form with every name (variables, buffers, blocks, the function) replaced by its order
of first appearance, then takes SHA-256: equal computations on equal shapes and dtypes hash the
same whatever they are called, and any difference in shape, dtype or computation changes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from . import stmt as _stmt  # noqa: F401  (registers statement node classes)
from .expr import NODE_TYPES, Buffer, Var
from .visit import fields_of


def encode(value: Any, names: dict[tuple[str, str], str] | None = None) -> Any:
    """A JSON-ready form of `value`; with `names`, names are anonymised through that table."""
    if isinstance(value, tuple | list):
        return [encode(v, names) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"float": repr(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        out: dict[str, Any] = {"node": cls.__name__}
        for f in fields_of(cls):
            v = getattr(value, f)
            if names is not None and f == "name":
                if isinstance(value, Var | Buffer):
                    kind = cls.__name__
                    v = names.setdefault((kind, v), f"{kind[0].lower()}{len(names)}")
                else:
                    v = ""
            out[f] = encode(v, names)
        return out
    if isinstance(value, dict):
        return {"dict": [[k, encode(v, names)] for k, v in sorted(value.items())]}
    raise TypeError(f"cannot serialise {type(value).__name__}")


def decode(data: Any) -> Any:
    """Rebuild nodes from the form `encode` wrote."""
    if isinstance(data, list):
        return tuple(decode(v) for v in data)
    if isinstance(data, dict):
        if "node" in data:
            cls = NODE_TYPES.get(data["node"])
            if cls is None:
                raise ValueError(f"unknown IR node kind {data['node']!r} in JSON")
            kwargs = {k: decode(v) for k, v in data.items() if k != "node"}
            return cls(**kwargs)
        if "float" in data:
            return float(data["float"])
        if "dict" in data:
            return {k: decode(v) for k, v in data["dict"]}
        raise ValueError(f"unrecognised JSON object with keys {sorted(data)}")
    return data


def to_json(value: Any, indent: int | None = None) -> str:
    """Serialise an IR node (a PrimFunc, a statement, an expression) to JSON text."""
    return json.dumps(encode(value), indent=indent, sort_keys=True)


def from_json(text: str) -> Any:
    """Parse JSON written by `to_json` back into nodes."""
    return decode(json.loads(text))


def structural_hash(value: Any) -> str:
    """A stable hex SHA-256 of the node's structure, ignoring every name."""
    canonical = json.dumps(encode(value, names={}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def structural_equal(a: Any, b: Any) -> bool:
    """Equal up to renaming."""
    return structural_hash(a) == structural_hash(b)
