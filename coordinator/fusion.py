"""Fusion of graph calls into the kernels that get tuned.

A call joins the group of the call that produces its input when the pair is in `FUSE_INTO`
and that input has no other reader, so the intermediate never goes to memory:

- the residual `add` becomes the epilogue of the dense that produces it (o_proj, down_proj);
- `silu_mul` / `gelu_mul` becomes the epilogue of the gate|up dense (one kernel computes the
  gate and up columns and writes only their activated product);
- `rope` becomes the epilogue of the q|k|v dense, its only reader; keys enter the kv cache
  already rotated, so attention never rotates the cache again;
- attention's scores, softmax and weighted sum fuse into one kernel (flash-attention style):
  the `b*h*n*m` scores stay on chip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tunefleet.coordinator.graph import Graph, OpCall, Tensor
from tunefleet.coordinator.opcost import call_flops, input_bytes

# consumer op -> producer ops (the last op of a group) it may fuse into
FUSE_INTO: dict[str, frozenset[str]] = {
    "add": frozenset({"dense", "q4_dense"}),
    "silu_mul": frozenset({"dense", "q4_dense"}),
    "gelu_mul": frozenset({"dense", "q4_dense"}),
    "rope": frozenset({"dense", "q4_dense"}),
    "softmax": frozenset({"batch_matmul"}),
    "batch_matmul": frozenset({"softmax"}),
}


@dataclass(frozen=True)
class FusedCall:
    """Calls that run as one kernel: the first (the anchor) and the epilogues it absorbed."""

    calls: tuple[OpCall, ...]

    @property
    def name(self) -> str:
        """Call names joined by '+', e.g. `o_proj+attn_residual`."""
        return "+".join(c.name for c in self.calls)

    @property
    def op(self) -> str:
        """Op names joined by '+', e.g. `dense+add`."""
        return "+".join(c.op for c in self.calls)

    @property
    def anchor(self) -> OpCall:
        """The first call; its kind is the group's kind."""
        return self.calls[0]

    @property
    def kind(self) -> str:
        return self.anchor.kind

    @property
    def per_layer(self) -> bool:
        return self.anchor.per_layer

    @property
    def inputs(self) -> tuple[Tensor, ...]:
        """Tensors read from outside the group, each once."""
        return tuple(t for t, _, _ in self._external())

    def _external(self) -> list[tuple[Tensor, OpCall, int]]:
        made = {c.output.name for c in self.calls}
        seen: dict[str, tuple[Tensor, OpCall, int]] = {}
        for c in self.calls:
            for i, t in enumerate(c.inputs):
                if t.name not in made:
                    seen.setdefault(t.name, (t, c, i))
        return list(seen.values())

    @property
    def output(self) -> Tensor:
        return self.calls[-1].output

    def flops(self, dims: Mapping[str, int]) -> int:
        """Analytic FLOPs of all calls of the group."""
        return sum(call_flops(c, dims) for c in self.calls)

    def nbytes(self, dims: Mapping[str, int]) -> int:
        """Bytes read from and written to memory: external inputs and the final output."""
        reads = sum(input_bytes(c, i, dims) for _, c, i in self._external())
        return reads + self.output.nbytes(dims)


def fuse(graph: Graph, enabled: bool = True) -> tuple[FusedCall, ...]:
    """Group the graph's calls into kernels; with `enabled=False` every call is its own."""
    if not enabled:
        return tuple(FusedCall((c,)) for c in graph.calls)
    readers: dict[str, int] = {}
    for c in graph.calls:
        for t in c.inputs:
            readers[t.name] = readers.get(t.name, 0) + 1
    groups: list[list[OpCall]] = []
    for c in graph.calls:
        if groups:
            last = groups[-1][-1]
            reads_last = any(t.name == last.output.name for t in c.inputs)
            if (
                reads_last
                and last.op in FUSE_INTO.get(c.op, ())
                and readers.get(last.output.name, 0) == 1
                and last.per_layer == c.per_layer
            ):
                groups[-1].append(c)
                continue
        groups.append([c])
    return tuple(FusedCall(tuple(g)) for g in groups)
