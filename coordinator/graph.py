"""The graph level: one forward pass of a decoder-only LLM as a list of op calls.

Shapes keep the symbolic dims of a serving engine: batch `b`, new tokens `n` and kv length
`m`. Decode adds one token to each of `b` sequences (`n = 1`; `b` and `m` symbolic). Prefill
runs one prompt of `n` tokens (`b = 1`; `n` and `m` symbolic; several prompts are packed into
one token dim by serving engines). Dense layers see the token count `b*n`, so every op keeps
a single symbolic row dim, as the op library requires.

One decoder layer is built once and marked `per_layer`: every layer of these models is the
same program, so its calls run `num_layers` times per forward pass. Projections that share an
input are concatenated (q|k|v and gate|up), as Phi-3 ships them and as serving engines load
the others, so each is one dense. Attention is three ir ops (scores, softmax, weighted sum)
that fusion turns into one attention task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tunefleet.coordinator.models import ModelConfig, ModelConfigError
from tunefleet.coordinator.symbolic import Dim, symbols_of

# Bits per element of graph tensors.
DTYPE_BITS: dict[str, int] = {
    "float32": 32,
    "float16": 16,
    "bfloat16": 16,
    "int32": 32,
    "uint32": 32,
}

KINDS = ("dense", "attention", "norm", "elementwise", "embedding")  # OpCall.kind values

Q4_GROUP = 32  # elements of k sharing one scale in q4 weights


class Phase(StrEnum):
    """Which forward pass: the prompt (prefill) or one new token per sequence (decode)."""

    PREFILL = "prefill"
    DECODE = "decode"


class Quant(StrEnum):
    """Weight storage of the dense layers."""

    NONE = "none"
    Q4 = "q4"


@dataclass(frozen=True)
class Tensor:
    """A named tensor of the graph with a symbolic shape."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str

    def nbytes(self, dims: Mapping[str, int]) -> int:
        """Size in bytes at the given dim values (rounded up to whole bytes)."""
        elems = math.prod(d.evaluate(dims) for d in self.shape)
        return (elems * DTYPE_BITS[self.dtype] + 7) // 8


@dataclass(frozen=True)
class OpCall:
    """One call of an ir op: its shape parameters, tensors, attributes and op kind."""

    name: str
    op: str
    params: tuple[tuple[str, Dim], ...]
    inputs: tuple[Tensor, ...]
    output: Tensor
    kind: str
    dtype: str
    attrs: tuple[tuple[str, Any], ...] = ()
    per_layer: bool = True

    @property
    def shape(self) -> dict[str, Dim]:
        """Shape parameters by name."""
        return dict(self.params)

    @property
    def attr(self) -> dict[str, Any]:
        """Attributes by name."""
        return dict(self.attrs)


@dataclass(frozen=True)
class Graph:
    """The calls of one forward pass; `per_layer` calls run once per decoder layer."""

    model: ModelConfig
    phase: Phase
    quant: Quant
    calls: tuple[OpCall, ...]
    fixed: Mapping[str, int] = field(default_factory=dict)  # dims the phase pins (`PINNED`)

    @property
    def symbols(self) -> tuple[str, ...]:
        """Symbolic dims used anywhere in the graph."""
        return tuple(sorted({s for c in self.calls for s in symbols_of(c.shape)}))

    def repeat(self, call: OpCall) -> int:
        """How many times `call` runs in one forward pass."""
        return self.model.num_layers if call.per_layer else 1


PINNED: dict[Phase, dict[str, int]] = {Phase.DECODE: {"n": 1}, Phase.PREFILL: {"b": 1}}


def phase_dims(phase: Phase) -> dict[str, Dim]:
    """The batch, new-token and kv-length dims of a phase, pinned ones as constants."""
    pinned = PINNED[phase]
    return {k: Dim.of(pinned.get(k, k)) for k in ("b", "n", "m")}


class _Builder:
    """Collects calls; keeps the tensor bookkeeping out of `build_graph`."""

    def __init__(self, cfg: ModelConfig, quant: Quant) -> None:
        self.cfg = cfg
        self.quant = quant
        self.dt = cfg.dtype
        self.calls: list[OpCall] = []
        self.per_layer = False

    def tensor(self, name: str, *shape: Dim | int | str, dtype: str | None = None) -> Tensor:
        return Tensor(name, tuple(Dim.of(s) for s in shape), dtype or self.dt)

    def call(self, name: str, op: str, kind: str, params: dict[str, Dim | int | str],
             inputs: list[Tensor], output: Tensor, **attrs: Any) -> Tensor:  # fmt: skip
        self.calls.append(
            OpCall(
                name=name,
                op=op,
                params=tuple((k, Dim.of(v)) for k, v in params.items()),
                inputs=tuple(inputs),
                output=output,
                kind=kind,
                dtype=self.dt,
                attrs=tuple(sorted(attrs.items())),
                per_layer=self.per_layer,
            )
        )
        return output

    def dense(self, name: str, x: Tensor, n: int, bias: bool = False) -> Tensor:
        """`x[t, k] . W[n, k]^T (+ bias)`, or its q4 form with packed weights and scales."""
        t, k = x.shape
        out = self.tensor(f"{name}.out", t, n)
        if self.quant is Quant.Q4:
            if k.coeff % Q4_GROUP or not k.is_static:
                raise ModelConfigError(
                    f"{self.cfg.name}: --quant q4 needs dense input widths that are multiples "
                    f"of {Q4_GROUP}; {name} has k={k}"
                )
            # eight 4-bit weights per uint32 word, one float16 scale per Q4_GROUP weights
            w = self.tensor(f"{name}.qweight", n, k.coeff // 8, dtype="uint32")
            s = self.tensor(f"{name}.scales", n, k.coeff // Q4_GROUP, dtype="float16")
            ins = [x, w, s]
            op, extra = "q4_dense", {"group_size": Q4_GROUP}
        else:
            ins = [x, self.tensor(f"{name}.weight", n, k)]
            op, extra = "dense", {}
        if bias:
            ins.append(self.tensor(f"{name}.bias", n))
        return self.call(name, op, "dense", {"m": t, "n": n, "k": k}, ins, out, bias=bias,
                         **extra)  # fmt: skip

    def rmsnorm(self, name: str, x: Tensor) -> Tensor:
        t, h = x.shape
        w = self.tensor(f"{name}.weight", h)
        out = self.tensor(f"{name}.out", t, h)
        return self.call(name, "rmsnorm", "norm", {"m": t, "n": h}, [x, w], out,
                         eps=self.cfg.norm_eps)  # fmt: skip

    def add(self, name: str, a: Tensor, b: Tensor) -> Tensor:
        t, h = a.shape
        return self.call(name, "add", "elementwise", {"m": t, "n": h}, [a, b],
                         self.tensor(f"{name}.out", t, h))  # fmt: skip


def build_graph(cfg: ModelConfig, phase: Phase, quant: Quant = Quant.NONE) -> Graph:
    """The op calls of one forward pass: embedding, one decoder layer, final norm, LM head."""
    d = phase_dims(phase)
    b, n, m = d["b"], d["n"], d["m"]
    tokens = b * n
    g = _Builder(cfg, quant)
    h, hd = cfg.num_heads, cfg.head_dim
    kvh = cfg.num_kv_heads

    ids = g.tensor("input_ids", tokens, dtype="int32")
    table = g.tensor("embed.weight", cfg.vocab_size, cfg.hidden_size)
    x = g.call("embed", "embedding", "embedding",
               {"m": tokens, "v": cfg.vocab_size, "n": cfg.hidden_size}, [ids, table],
               g.tensor("embed.out", tokens, cfg.hidden_size),
               scale=math.sqrt(cfg.hidden_size) if cfg.scale_embedding else 1.0)  # fmt: skip

    g.per_layer = True
    hn = g.rmsnorm("input_norm", x)
    qkv = g.dense("qkv_proj", hn, cfg.q_size + 2 * cfg.kv_size, bias=cfg.qkv_bias)
    # rope rotates the q and k columns of qkv in place of position; v passes through.
    cos = g.tensor("rope.cos", tokens, hd // 2, dtype="float32")  # tables at the positions
    sin = g.tensor("rope.sin", tokens, hd // 2, dtype="float32")
    qkv_r = g.call("rope", "rope", "elementwise",
                   {"m": tokens, "h": h, "kv": kvh, "d": hd}, [qkv, cos, sin],
                   g.tensor("rope.out", tokens, cfg.q_size + 2 * cfg.kv_size),
                   theta=cfg.rope_theta)  # fmt: skip
    # q[b, h, n, d] . k_cache[b, kvh, m, d]^T with query head i reading kv head i // group;
    # the 1/sqrt(d) scale is folded into the query projection's weights
    att_params = {"b": b, "h": h, "kv": kvh, "n": n, "m": m, "d": hd}
    k_cache = g.tensor("k_cache", b, kvh, m, hd)
    v_cache = g.tensor("v_cache", b, kvh, m, hd)
    # attention reads the query columns of the rotated qkv (keys and values went to the caches)
    q = Tensor(qkv_r.name, (tokens, Dim.of(cfg.q_size)), qkv_r.dtype)
    scores = g.call("attn_scores", "batch_matmul", "attention", att_params, [q, k_cache],
                    g.tensor("scores", b, h, n, m), transpose_b=True,
                    group=cfg.group_size)  # fmt: skip
    probs = g.call("attn_softmax", "softmax", "attention", {"m": b * h * n, "n": m}, [scores],
                   g.tensor("probs", b, h, n, m))  # fmt: skip
    ctx = g.call("attn_context", "batch_matmul", "attention", att_params, [probs, v_cache],
                 g.tensor("context", tokens, cfg.q_size), transpose_b=False,
                 group=cfg.group_size)  # fmt: skip
    o = g.dense("o_proj", ctx, cfg.hidden_size, bias=cfg.o_bias)
    x1 = g.add("attn_residual", o, x)
    hn2 = g.rmsnorm("post_norm", x1)
    inter = cfg.intermediate_size
    gu = g.dense("gate_up_proj", hn2, 2 * inter, bias=cfg.mlp_bias)
    act_op = "silu_mul" if cfg.activation == "silu" else "gelu_mul"
    act = g.call("act", act_op, "elementwise", {"m": tokens, "n": inter}, [gu],
                 g.tensor("act.out", tokens, inter))  # fmt: skip
    down = g.dense("down_proj", act, cfg.hidden_size, bias=cfg.mlp_bias)
    x2 = g.add("mlp_residual", down, x1)

    g.per_layer = False
    xf = g.rmsnorm("final_norm", x2)
    g.dense("lm_head", xf, cfg.vocab_size)
    return Graph(cfg, phase, quant, tuple(g.calls), dict(PINNED[phase]))
