"""Analytic FLOP and byte counts of graph op calls.

They key and count kernels without ir (`lowering.graph_kernel`, which the tests hold the ir
kernels to), and give the two counts ir's loop nests overstate: q4 dense FLOPs and the rows
an embedding gather reads.

A multiply-add is two FLOPs; elementwise work counts one FLOP per arithmetic operation the
reference formula performs. Bytes come from the tensors a call touches (`Tensor.nbytes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from tunefleet.coordinator.graph import OpCall


def _dense(s: Mapping[str, int], attrs: Mapping[str, object]) -> int:
    flops = 2 * s["m"] * s["n"] * s["k"]
    return flops + (s["m"] * s["n"] if attrs.get("bias") else 0)


def _batch_matmul(s: Mapping[str, int], attrs: Mapping[str, object]) -> int:
    return 2 * s["b"] * s["h"] * s["n"] * s["m"] * s["d"]


_FLOPS: dict[str, Callable[[Mapping[str, int], Mapping[str, object]], int]] = {
    "embedding": lambda s, a: 0 if a.get("scale", 1.0) == 1.0 else s["m"] * s["n"],
    "dense": _dense,
    # the multiply-adds; dequantising a weight once per tile is not counted
    "q4_dense": _dense,
    "batch_matmul": _batch_matmul,
    # x^2, sum, mean+eps+rsqrt per row (small), x*r, *w
    "rmsnorm": lambda s, a: 4 * s["m"] * s["n"],
    # max, x-max, exp, sum, divide
    "softmax": lambda s, a: 5 * s["m"] * s["n"],
    # two multiplies and an add for each rotated q/k element
    "rope": lambda s, a: 3 * s["m"] * (s["h"] + s["kv"]) * s["d"],
    # silu(g) = g / (1 + exp(-g)) (3) and the multiply by u
    "silu_mul": lambda s, a: 4 * s["m"] * s["n"],
    # tanh-approximated gelu (~8) and the multiply by u
    "gelu_mul": lambda s, a: 9 * s["m"] * s["n"],
    "add": lambda s, a: s["m"] * s["n"],
}


def input_bytes(call: OpCall, index: int, dims: Mapping[str, int]) -> int:
    """Bytes a call reads of its `index`-th input: all of it, except the rows a gather takes."""
    t = call.inputs[index]
    if call.op == "embedding" and index == 1:
        shape = call.shape
        rows = shape["m"].evaluate(dims)
        return rows * t.nbytes(dims) // t.shape[0].evaluate(dims)
    return t.nbytes(dims)


def call_flops(call: OpCall, dims: Mapping[str, int]) -> int:
    """FLOPs of one call at the given values of its symbolic dims."""
    shape = {k: v.evaluate(dims) for k, v in call.params}
    return _FLOPS[call.op](shape, call.attr)
