"""What a fused call becomes for tuning (`Kernel`), and the lowering that needs no ir.

`kernels.ir_kernel` is the lowering tasks use; `graph_kernel` keys and counts a fused call from
the graph alone (the analytic op formulas and the graph's tensors), which the tests use to
check the ir kernels' counts.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tunefleet.coordinator.fusion import FusedCall
from tunefleet.coordinator.graph import Graph
from tunefleet.coordinator.symbolic import Dim


@dataclass(frozen=True)
class Kernel:
    """A fused call lowered for tuning: its workload key and its cost functions."""

    workload_key: str
    flops: Callable[[Mapping[str, int]], int]
    nbytes: Callable[[Mapping[str, int]], int]
    func: Any = None  # the ir PrimFunc, where the call was lowered to ir


Lowering = Callable[[FusedCall, Graph], Kernel]


def graph_kernel(group: FusedCall, graph: Graph) -> Kernel:
    """Lower a fused call without ir: a canonical-form key and the analytic costs."""
    return Kernel(graph_workload_key(group), group.flops, group.nbytes)


def graph_workload_key(group: FusedCall) -> str:
    """A hash of the group's ops, shapes, dtypes and attributes that ignores every name.

    Symbols are renamed by order of first appearance, as a structural hash would.
    """
    rename: dict[str, str] = {}

    def dim(d: Dim) -> list[Any]:
        return [d.coeff, [rename.setdefault(v, f"s{len(rename)}") for v in d.vars]]

    form = []
    for c in group.calls:
        form.append(
            {
                "op": c.op,
                "params": [[k, dim(v)] for k, v in c.params],
                "inputs": [[t.dtype, [dim(d) for d in t.shape]] for t in c.inputs],
                "output": [c.output.dtype, [dim(d) for d in c.output.shape]],
                "attrs": [[k, repr(v)] for k, v in c.attrs],
            }
        )
    text = json.dumps(form, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
