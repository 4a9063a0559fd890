"""Tuning tasks: fused kernels de-duplicated by workload key, weighted by calls per pass.

Two kernels with the same structure are one task, whatever they are called and wherever they
sit: the three RMS norms of a pass (before attention, before the MLP, before the LM head) are
one task of weight `2 * layers + 1`, and the layers themselves collapse into their first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tunefleet.coordinator.buckets import buckets_for
from tunefleet.coordinator.fusion import fuse
from tunefleet.coordinator.graph import Graph, OpCall, Phase, Quant, build_graph
from tunefleet.coordinator.kernels import ir_kernel
from tunefleet.coordinator.lowering import Kernel, Lowering
from tunefleet.coordinator.models import ModelConfig
from tunefleet.coordinator.symbolic import Dim, symbols_of


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
    calls: tuple[OpCall, ...] = ()  # the op chain of the first fused call (anchor first)
    phase: Phase | None = None  # the pass it belongs to (attention masks in prefill)

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


def extract_tasks(
    graph: Graph,
    *,
    fusion: bool = True,
    buckets: Mapping[str, tuple[int, ...]] | None = None,
    lowering: Lowering | None = None,
) -> list[Task]:
    """Fuse the graph, lower each kernel and merge kernels with equal workload keys.

    `buckets` overrides the phase's default bucket values; `lowering` turns a fused call into
    a `Kernel` (default `ir_kernel`: an ir PrimFunc keyed by its structural hash;
    `graph_kernel` needs no ir). Tasks come in order of first appearance in the pass.
    """
    if lowering is None:
        lowering = ir_kernel
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
            calls=group.calls,
            phase=graph.phase,
        )
    return list(by_key.values())


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
