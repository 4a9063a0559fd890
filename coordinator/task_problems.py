"""What a task's kernel must compute: a runner `Problem` composed from the unfused op chain.

A fused kernel has no hand-written reference. Its `Problem` names `TASK_CHAIN`, an object with
the `make_inputs` / `reference` pair a runner calls, and carries the task's op chain as JSON
text in its attrs (plain data: a Problem crosses process and Ray boundaries and keys caches).
`TASK_CHAIN` rebuilds the chain and composes the library ops of `ir.ops`:

- inputs are drawn by each op's input maker, in the kernel's parameter order;
- the reference runs each op's numpy reference on what the op before it would have stored
  (its output rounded to the task's dtype), reshaped to the layout the kernel writes: a q|k|v
  dense with rope is `rope_ref(dense_ref(x, w))` on the q and k heads plus the v heads, as
  `[tokens, heads, 2, d/2]`;
  attention is `bmm_ref(softmax_ref(mask(bmm_ref(q, k))), v)` with grouped-query heads and, in
  prefill, the causal mask of new token i at position m - n + i.

Bucket values of a task's symbolic dims become the concrete dims of its problem with
`task_dims`; `task_buckets` lists every bucket point of a task.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunefleet.coordinator.graph import PINNED, OpCall, Phase
from tunefleet.coordinator.kernels import library_attrs, library_shape
from tunefleet.coordinator.symbolic import Dim
from tunefleet.coordinator.tasks import Task
from tunefleet.ir.dtypes import from_float32, to_float32
from tunefleet.ir.ops import get_op
from tunefleet.workers.results import Problem

PROBLEM_OP = "tunefleet.coordinator.task_problems:TASK_CHAIN"


class TaskProblemError(ValueError):
    """A task that has no composed problem, or dims that do not fit it."""


@dataclass(frozen=True)
class ChainCall:
    """One op of a task's chain: its name, shape params and attributes."""

    op: str
    params: Mapping[str, Dim]
    attrs: Mapping[str, Any]

    def shape(self, dims: Mapping[str, int]) -> dict[str, int]:
        """The call's params as ints at `dims`."""
        return {k: v.evaluate(dims) for k, v in self.params.items()}

    @property
    def static(self) -> dict[str, int]:
        """The params that no symbolic dim changes (head counts, widths)."""
        return {k: v.coeff for k, v in self.params.items() if v.is_static}

    @property
    def attr(self) -> dict[str, Any]:
        return dict(self.attrs)


@dataclass(frozen=True)
class Chain:
    """A task's op chain, its element type and its phase, as a Problem carries them."""

    calls: tuple[ChainCall, ...]
    dtype: str
    phase: Phase

    @property
    def op(self) -> str:
        """Op names joined by '+', as `FusedCall.op` spells them."""
        return "+".join(c.op for c in self.calls)

    def to_json(self) -> str:
        """Canonical JSON text: symbolic params as [coeff, [vars]]."""
        calls = [
            {
                "op": c.op,
                "params": {k: [v.coeff, list(v.vars)] for k, v in c.params.items()},
                "attrs": dict(c.attrs),
            }
            for c in self.calls
        ]
        form = {"calls": calls, "dtype": self.dtype, "phase": self.phase.value}
        return json.dumps(form, sort_keys=True, separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> Chain:
        form = json.loads(text)
        calls = tuple(
            ChainCall(
                c["op"],
                {k: Dim(int(v[0]), tuple(v[1])) for k, v in c["params"].items()},
                dict(c["attrs"]),
            )
            for c in form["calls"]
        )
        return Chain(calls, form["dtype"], Phase(form["phase"]))

    @staticmethod
    def of_calls(calls: Sequence[OpCall], phase: Phase) -> Chain:
        """The chain of graph calls, with the dims the phase pins substituted."""
        pinned = PINNED[phase]
        out = tuple(
            ChainCall(c.op, {k: v.substitute(pinned) for k, v in c.params}, dict(c.attrs))
            for c in calls
        )
        return Chain(out, calls[0].dtype, phase)


# --------------------------------------------------------------------- helpers


def stored(values: np.ndarray, dtype: str) -> np.ndarray:
    """What an op writing `values` in `dtype` leaves in memory (bf16 as bit patterns)."""
    return from_float32(np.asarray(values, dtype=np.float32), dtype)


def _decoded(array: np.ndarray, dtype: str) -> np.ndarray:
    """A stored array read back as float64."""
    if dtype == "bfloat16" and np.asarray(array).dtype == np.uint16:
        return to_float32(array, dtype).astype(np.float64)
    return np.asarray(array).astype(np.float64)


def _dense_shape(call: ChainCall, dims: Mapping[str, int]) -> dict[str, int]:
    s = call.shape(dims)
    return {"m": s["m"], "n": s["n"], "k": s["k"]}


def _anchor_inputs(
    call: ChainCall, dims: Mapping[str, int], dtype: str, rng: np.random.Generator
) -> list[np.ndarray]:
    """x, w (or qweight, scales) and the optional bias of a dense anchor."""
    shape, bias = _dense_shape(call, dims), bool(call.attr.get("bias"))
    if call.op == "q4_dense":
        ins = get_op("q4_dense").make_inputs(shape, dtype, rng, group_size=call.attr["group_size"])
        if bias:  # the library's q4_dense has none: draw it as the dense layer's bias
            one = {"m": 1, "n": shape["n"], "k": 1}
            ins.append(get_op("dense").make_inputs(one, dtype, rng, bias=True)[2])
        return ins
    return get_op("dense").make_inputs(shape, dtype, rng, bias=bias)


def _anchor_reference(
    call: ChainCall, inputs: Sequence[np.ndarray], dt: str
) -> tuple[np.ndarray, int]:
    """The dense anchor's output (float32) and how many inputs it consumed."""
    bias = bool(call.attr.get("bias"))
    if call.op == "q4_dense":
        x, qw, sc = inputs[:3]
        y = get_op("q4_dense").reference(x, qw, sc, group_size=call.attr["group_size"])
        if bias:  # the q4 dense stores its product, then the bias is added to it
            y = get_op("add").reference(stored(y, dt), np.broadcast_to(inputs[3], y.shape))
        return y, 3 + bias
    used = 3 if bias else 2
    return get_op("dense").reference(*inputs[:used], bias=bias), used


# --------------------------------------------------------------------- chain kinds


def _epilogue_inputs(
    chain: Chain, dims: Mapping[str, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """Inputs the epilogue reads besides the anchor's output, in the kernel's order."""
    anchor, dt = chain.calls[0], chain.dtype
    if len(chain.calls) == 1:
        return []
    epi = chain.calls[1]
    t, n = anchor.shape(dims)["m"], anchor.shape(dims)["n"]
    if epi.op == "add":  # the residual
        return [get_op("add").make_inputs({"m": t, "n": n}, dt, rng)[1]]
    if epi.op == "rope":  # the cos and sin tables at the tokens' positions
        d = epi.shape(dims)["d"]
        return get_op("rope").make_inputs({"m": t, "h": 1, "d": d}, dt, rng)[1:]
    return []  # silu_mul / gelu_mul read only the anchor's gate|up columns


def anchor_grid(chain: Chain, dims: Mapping[str, int]) -> tuple[int, ...] | None:
    """The layout of the dense's `n` output columns that the fused kernel uses, when its
    epilogue pairs columns (`coordinator.kernels` views the weights the same way): gate|up
    as (2, inter), q|k|v heads with rope as (heads, 2, d/2); None for a plain `[m, n]`."""
    if len(chain.calls) < 2:
        return None
    epi = chain.calls[1]
    if epi.op in ("silu_mul", "gelu_mul"):
        return (2, chain.calls[0].shape(dims)["n"] // 2)
    if epi.op == "rope":
        s = epi.static
        return (s["h"] + 2 * s["kv"], 2, s["d"] // 2)
    return None


def _dense_chain_inputs(
    chain: Chain, dims: Mapping[str, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """The anchor's and the epilogue's inputs; weight-side arrays (everything of the anchor
    after x) reshaped to the kernel's grid view where it has one (same memory)."""
    anchor = _anchor_inputs(chain.calls[0], dims, chain.dtype, rng)
    grid = anchor_grid(chain, dims)
    if grid is not None:
        anchor = [anchor[0], *(a.reshape(*grid, *a.shape[1:]) for a in anchor[1:])]
    return [*anchor, *_epilogue_inputs(chain, dims, rng)]


def _gated(op: str, gate: np.ndarray, up: np.ndarray, dt: str) -> np.ndarray:
    """silu(gate) * up, or gelu_tanh(gate) * up with the gelu stored before the multiply."""
    if op == "silu_mul":
        return get_op("silu_mul").reference(gate, up)
    act = stored(get_op("gelu").reference(gate, approximate="tanh"), dt)
    return (_decoded(act, dt) * _decoded(up, dt)).astype(np.float32)


def _dense_chain_reference(chain: Chain, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
    anchor, dt = chain.calls[0], chain.dtype
    if inputs[1].ndim > 2:  # weights in a grid view: back to rows of the plain dense
        n = int(np.prod(inputs[1].shape[:-1]))
        count = (3 if anchor.op == "q4_dense" else 2) + bool(anchor.attr.get("bias"))
        rows = [a.reshape(n, -1) if a.ndim > len(inputs[1].shape) - 1 else a.reshape(n)
                for a in inputs[1:count]]  # fmt: skip
        inputs = (inputs[0], *rows, *inputs[count:])
    y, used = _anchor_reference(anchor, inputs, dt)
    if len(chain.calls) == 1:
        return (y,)
    epi, rest, ys = chain.calls[1], inputs[used:], stored(y, dt)
    if epi.op == "add":
        return (get_op("add").reference(ys, rest[0]),)
    if epi.op in ("silu_mul", "gelu_mul"):
        inter = ys.shape[1] // 2
        return (_gated(epi.op, ys[:, :inter], ys[:, inter:], dt),)
    if epi.op == "rope":
        s = epi.static
        h, kv, d = s["h"], s["kv"], s["d"]
        t = ys.shape[0]
        heads = ys.reshape(t, h + 2 * kv, d)  # q | k | v heads; v passes through
        qk = get_op("rope").reference(heads[:, : h + kv], *rest[:2])
        v = _decoded(heads[:, h + kv :], dt).astype(np.float32)
        return (np.concatenate([qk, v], axis=1).reshape(t, h + 2 * kv, 2, d // 2),)
    raise TaskProblemError(f"no reference for epilogue {epi.op!r}")


def _attention_inputs(
    chain: Chain, dims: Mapping[str, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """q[b,h,n,d] and k_cache[b,kv,m,d] from the scores op, v_cache from the context op;
    a decode step's caches position-major, [m,b,kv,d] (`coordinator.kernels._attention`)."""
    scores, _, context = chain.calls
    dt = chain.dtype
    bmm = get_op("batch_matmul")
    q_attrs = library_attrs(scores.op, scores.attr)
    v_attrs = library_attrs(context.op, context.attr)
    q_shape = library_shape(scores.op, scores.shape(dims), q_attrs)
    q, k = bmm.make_inputs(q_shape, dt, rng, **q_attrs)
    v_shape = library_shape(context.op, context.shape(dims), v_attrs)
    v = bmm.make_inputs(v_shape, dt, rng, **v_attrs)[1]
    if chain.phase is Phase.DECODE:
        k, v = (np.ascontiguousarray(a.transpose(2, 0, 1, 3)) for a in (k, v))
    return [q, k, v]


def _attention_reference(chain: Chain, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple:
    """Scores in float32 (as the kernel keeps them), the causal mask in prefill, the softmax
    stored in the task's dtype, and the weighted sum of the values."""
    scores_call, _, context_call = chain.calls
    bmm, dt = get_op("batch_matmul"), chain.dtype
    if chain.phase is Phase.DECODE:  # position-major caches back to [b, kv, m, d]
        k, v = (a.transpose(1, 2, 0, 3) for a in (k, v))
    scores = bmm.reference(q, k, transpose_b=True, group=scores_call.attr.get("group", 1))
    b, h, n, m = scores.shape
    if chain.phase is Phase.PREFILL:  # new token i sits at position m - n + i
        visible = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
        scores = np.where(visible, scores, np.float32(-np.inf))
    probs = get_op("softmax").reference(scores.reshape(b * h * n, m)).reshape(b, h, n, m)
    out = bmm.reference(
        stored(probs, dt), v, transpose_b=False, group=context_call.attr.get("group", 1)
    )
    return (out,)


def _embedding_inputs(
    chain: Chain, dims: Mapping[str, int], rng: np.random.Generator
) -> list[np.ndarray]:
    """Token ids in [0, vocab) and the table (no library op: a gather has nothing to fuse)."""
    s = chain.calls[0].shape(dims)
    ids = rng.integers(0, s["v"], size=(s["m"],)).astype(np.int32)
    table = from_float32(rng.standard_normal((s["v"], s["n"])).astype(np.float32), chain.dtype)
    return [ids, table]


def _embedding_reference(chain: Chain, ids: np.ndarray, table: np.ndarray) -> tuple:
    scale = float(chain.calls[0].attr.get("scale", 1.0))
    rows = _decoded(table, chain.dtype)[np.asarray(ids).astype(np.int64)]
    return ((rows * scale).astype(np.float32),)


def _gelu_mul_inputs(
    chain: Chain, dims: Mapping[str, int], rng: np.random.Generator
) -> list[np.ndarray]:
    s = chain.calls[0].shape(dims)
    return [get_op("gelu").make_inputs({"m": s["m"], "n": 2 * s["n"]}, chain.dtype, rng)[0]]


def _gelu_mul_reference(chain: Chain, gate_up: np.ndarray) -> tuple:
    inter = gate_up.shape[1] // 2
    return (_gated("gelu_mul", gate_up[:, :inter], gate_up[:, inter:], chain.dtype),)


def _library_inputs(
    chain: Chain, dims: Mapping[str, int], rng: np.random.Generator
) -> list[np.ndarray]:
    call = chain.calls[0]
    attrs = library_attrs(call.op, call.attr)
    shape = library_shape(call.op, call.shape(dims), attrs)
    return get_op(call.op).make_inputs(shape, chain.dtype, rng, **attrs)


def _library_reference(chain: Chain, *inputs: np.ndarray) -> tuple:
    call = chain.calls[0]
    return (get_op(call.op).reference(*inputs, **library_attrs(call.op, call.attr)),)


@dataclass(frozen=True)
class ChainKind:
    """How a chain's inputs are drawn and its reference composed."""

    inputs: Callable[[Chain, Mapping[str, int], np.random.Generator], list[np.ndarray]]
    reference: Callable[..., tuple[np.ndarray, ...]]


_DENSE = ChainKind(_dense_chain_inputs, _dense_chain_reference)
_LIBRARY = ChainKind(_library_inputs, _library_reference)
CHAIN_KINDS: dict[str, ChainKind] = {
    **{
        f"{anchor}{epi}": _DENSE
        for anchor in ("dense", "q4_dense")
        for epi in ("", "+add", "+silu_mul", "+gelu_mul", "+rope")
    },
    "batch_matmul+softmax+batch_matmul": ChainKind(_attention_inputs, _attention_reference),
    "embedding": ChainKind(_embedding_inputs, _embedding_reference),
    "gelu_mul": ChainKind(_gelu_mul_inputs, _gelu_mul_reference),
    **{op: _LIBRARY for op in ("batch_matmul", "rope", "rmsnorm", "softmax", "silu_mul", "add")},
}


def _kind(chain: Chain) -> ChainKind:
    kind = CHAIN_KINDS.get(chain.op)
    if kind is None:
        raise TaskProblemError(
            f"no composed problem for {chain.op!r}; known: {', '.join(CHAIN_KINDS)}"
        )
    return kind


class TaskChainOp:
    """The runner's op for every task: inputs and reference from the chain in attr `chain`."""

    def make_inputs(
        self, dims: Mapping[str, int], dtype: str, rng: np.random.Generator, *, chain: str
    ) -> list[np.ndarray]:
        """Random inputs in the kernel's parameter order."""
        decoded = Chain.from_json(chain)
        return _kind(decoded).inputs(decoded, dims, rng)

    def reference(self, *inputs: np.ndarray, chain: str) -> tuple[np.ndarray, ...]:
        """The kernel's outputs, in order, computed by the unfused chain's references."""
        decoded = Chain.from_json(chain)
        return tuple(_kind(decoded).reference(decoded, *inputs))


TASK_CHAIN = TaskChainOp()


# --------------------------------------------------------------------- public API


def task_chain(task: Task) -> Chain:
    """The task's op chain as a Problem carries it."""
    if not task.calls or task.phase is None:
        raise TaskProblemError(f"task {task.name} was built without its op chain")
    chain = Chain.of_calls(task.calls, task.phase)
    _kind(chain)
    return chain


def task_problem(task: Task, dims: Mapping[str, int]) -> Problem:
    """The Problem a runner checks a candidate of `task` against, at concrete `dims`.

    `dims` must give every symbolic dim of the task (others are ignored); they become the
    kernel's scalar arguments.
    """
    missing = [s for s in task.symbolic if s not in dims]
    if missing:
        raise TaskProblemError(f"task {task.name} needs values for {', '.join(missing)}")
    values = {s: int(dims[s]) for s in task.symbolic}
    if any(v <= 0 for v in values.values()):
        raise TaskProblemError(f"dims must be positive, got {values}")
    return Problem.create(PROBLEM_OP, values, task.dtype, chain=task_chain(task).to_json())


def task_dims(task: Task, bucket_values: Mapping[str, int]) -> dict[str, int]:
    """The concrete dims a task is tuned and checked at for one bucket point.

    A bucket value is the representative size of its bucket (the kernel is compiled for
    symbolic extents and serves every size of the bucket). A prefill kv length shorter than
    the prompt is raised to the prompt length, as no new token can sit before position 0.
    """
    dims = {s: int(bucket_values[s]) for s in task.symbolic if s in bucket_values}
    missing = [s for s in task.symbolic if s not in dims]
    if missing:
        raise TaskProblemError(f"task {task.name} needs bucket values for {', '.join(missing)}")
    if "n" in dims and "m" in dims:
        dims["m"] = max(dims["m"], dims["n"])
    return dims


def task_buckets(task: Task) -> list[dict[str, int]]:
    """Every bucket point of a task (the product of its dims' bucket values), as dims."""
    names = [name for name, _ in task.buckets]
    points = itertools.product(*(values for _, values in task.buckets))
    return [task_dims(task, dict(zip(names, p, strict=True))) for p in points]
