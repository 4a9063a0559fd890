"""Tuning tasks: fused kernels de-duplicated by workload key, weighted by calls per pass.

Two kernels with the same structure are one task, whatever they are called and wherever they
sit: the three RMS norms of a pass (before attention, before the MLP, before the LM head) are
one task of weight `2 * layers + 1`, and the layers themselves collapse into their first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from tunefleet.coordinator.buckets import buckets_for
from tunefleet.coordinator.fusion import FusedCall, fuse
from tunefleet.coordinator.graph import Graph, Phase, Quant, build_graph
from tunefleet.coordinator.models import ModelConfig
from tunefleet.coordinator.symbolic import Dim, symbols_of


@dataclass(frozen=True)
class Kernel:
    """A fused call lowered for tuning: its workload key and its cost functions."""

    workload_key: str
    flops: Callable[[Mapping[str, int]], int]
    nbytes: Callable[[Mapping[str, int]], int]
    func: Any = None  # the ir PrimFunc, where the call was lowered to ir


Lowering = Callable[[FusedCall, Graph], Kernel]


@dataclass(frozen=True)
class Task:
    """One workload to tune, with how often a forward pass runs it and where to tune it."""

    workload_key: str
    names: tuple[str, ...]  # the fused calls that share this workload
    op: str
    kind: str
    dtype: str
    shape: tuple[tuple[str, Dim], ...]  # the anchor op's shape parameters
    buckets: tuple[tuple[str, tuple[int, ...]], ...]
    weight: int
    kernel: Kernel

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def func(self) -> Any:
        """The task's ir PrimFunc (None for tasks lowered without ir)."""
        return self.kernel.func

    @property
    def symbolic(self) -> tuple[str, ...]:
        """Symbolic dims the task's shape depends on."""
        return symbols_of(dict(self.shape))

    def flops(self, dims: Mapping[str, int]) -> int:
        """FLOPs of one call at the given dim values."""
        return self.kernel.flops(dims)

    def nbytes(self, dims: Mapping[str, int]) -> int:
        """Bytes one call reads and writes at the given dim values."""
        return self.kernel.nbytes(dims)

    def to_json(self, dims: Mapping[str, int]) -> dict[str, Any]:
        """The task as the `tunefleet tasks --json` record, costs at `dims`."""
        return {
            "workload_key": self.workload_key,
            "name": self.name,
            "calls": list(self.names),
            "op": self.op,
            "kind": self.kind,
            "dtype": self.dtype,
            "shape": {k: (v.coeff if v.is_static else str(v)) for k, v in self.shape},
            "symbolic": list(self.symbolic),
            "buckets": {k: list(v) for k, v in self.buckets},
            "weight": self.weight,
            "flops": self.flops(dims),
            "bytes": self.nbytes(dims),
        }


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


def extract_tasks(
    graph: Graph,
    *,
    fusion: bool = True,
    buckets: Mapping[str, tuple[int, ...]] | None = None,
    lowering: Lowering | None = None,
) -> list[Task]:
    """Fuse the graph, lower each kernel and merge kernels with equal workload keys.

    `buckets` overrides the phase's default bucket values; `lowering` turns a fused call into
    a `Kernel` (default: through ir where it can build the call, else the graph-level form).
    Tasks come in order of first appearance in the pass.
    """
    if lowering is None:
        lowering = default_lowering()
    phase_buckets = buckets_for(graph.phase, buckets)
    by_key: dict[str, Task] = {}
    for group in fuse(graph, fusion):
        kernel = lowering(group, graph)
        reps = graph.repeat(group.anchor)
        old = by_key.get(kernel.workload_key)
        if old is not None:
            names = old.names if group.name in old.names else (*old.names, group.name)
            by_key[kernel.workload_key] = replace(old, names=names, weight=old.weight + reps)
            continue
        shape = tuple((k, v.substitute(graph.fixed)) for k, v in group.anchor.params)
        syms = symbols_of(dict(shape))
        by_key[kernel.workload_key] = Task(
            workload_key=kernel.workload_key,
            names=(group.name,),
            op=group.op,
            kind=group.kind,
            dtype=group.anchor.dtype,
            shape=shape,
            buckets=tuple((s, phase_buckets[s]) for s in syms),
            weight=reps,
            kernel=kernel,
        )
    return list(by_key.values())


def default_lowering() -> Lowering:
    """Lowering through ir: PrimFuncs, structural-hash keys, FLOPs and bytes counted on them."""
    from tunefleet.coordinator.kernels import ir_kernel  # kernels imports this module

    return ir_kernel


def model_tasks(
    model: ModelConfig,
    phase: Phase,
    quant: Quant = Quant.NONE,
    *,
    fusion: bool = True,
    buckets: Mapping[str, tuple[int, ...]] | None = None,
) -> list[Task]:
    """The tuning tasks of one forward pass of `model` (graph, fusion and de-duplication)."""
    return extract_tasks(build_graph(model, phase, quant), fusion=fusion, buckets=buckets)
