"""The operator library: LLM workloads as PrimFuncs, each with a numpy reference.

Every op exposes its compute function over frontend tensors (`dense_compute`, `add_compute`,
...) so fused PrimFuncs can be composed, and an `OpDef` in the registry (`get_op`, `list_ops`)
that builds the PrimFunc from shape parameters (ints or symbolic `Var`s), gives the reference
and makes valid random inputs. Element types: float32, float16, bfloat16 (host arrays hold
bf16 as uint16 bit patterns); arithmetic and accumulation are float32 in the kernel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import tensor_expr as te
from .dtypes import from_float32, numpy_dtype, to_float32
from .expr import Expr, ExprLike, Var, cast, erf, exp, rsqrt, select, tanh
from .stmt import PrimFunc

FLOAT_DTYPES = ("float32", "float16", "bfloat16")


class UnknownOpError(ValueError):
    """An op name that is not in the library."""


class OpArgumentError(ValueError):
    """Bad shape parameters, dtype or attributes for an op."""


def _f32(e: ExprLike) -> Expr:
    return cast("float32", e)


def _as_f32_dim(d: ExprLike) -> Expr:
    return cast("float32", d)


# ---------------------------------------------------------------- compute functions


def dense_compute(
    x: te.Tensor,
    w: te.Tensor,
    bias: te.Tensor | None = None,
    out_dtype: str | None = None,
    name: str = "dense",
) -> te.Tensor:
    """y[i, j] = sum_k x[i, k] * w[j, k] (+ bias[j]): the Linear layer, fp32 accumulation."""
    m, k = x.shape
    n = w.shape[0]
    dtype = out_dtype or x.dtype
    r = te.reduce_axis(k, "k")
    direct = bias is None and dtype == "float32"
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(_f32(x[i, r]) * _f32(w[j, r]), r),
        name if direct else name + "_acc",
    )
    if direct:
        return acc
    if bias is None:
        return te.compute((m, n), lambda i, j: cast(dtype, acc[i, j]), name)
    return te.compute((m, n), lambda i, j: cast(dtype, acc[i, j] + _f32(bias[j])), name)


def matmul_compute(
    a: te.Tensor, b: te.Tensor, out_dtype: str | None = None, name: str = "matmul"
) -> te.Tensor:
    """c[i, j] = sum_k a[i, k] * b[k, j], fp32 accumulation."""
    m, k = a.shape
    n = b.shape[1]
    dtype = out_dtype or a.dtype
    r = te.reduce_axis(k, "k")
    if dtype == "float32":
        return te.compute((m, n), lambda i, j: te.sum(_f32(a[i, r]) * _f32(b[r, j]), r), name)
    acc = te.compute((m, n), lambda i, j: te.sum(_f32(a[i, r]) * _f32(b[r, j]), r), name + "_acc")
    return te.compute((m, n), lambda i, j: cast(dtype, acc[i, j]), name)


def batch_matmul_compute(
    a: te.Tensor,
    b: te.Tensor,
    transpose_b: bool = True,
    group: int = 1,
    out_dtype: str | None = None,
    name: str = "batch_matmul",
    positions_first: bool = False,
) -> te.Tensor:
    """c[z, h, i, j] = sum_k a[z, h, i, k] * b[z, h // group, j, k] (or b[z, h // group, k, j]).

    With transpose_b this is attention scores q.k^T, without it p.v; `group` query heads share
    one key/value head (grouped-query attention). `positions_first`: b is a kv cache laid out
    position-major, b[j, z, h // group, k] (or b[k, z, h // group, j]), so its first m rows
    are the cache of length m as it stands.
    """
    bz, h, m, k = a.shape
    if positions_first:
        n = b.shape[0] if transpose_b else b.shape[3]
    else:
        n = b.shape[2] if transpose_b else b.shape[3]
    dtype = out_dtype or a.dtype
    r = te.reduce_axis(k, "k")

    def rhs(z: Expr, hh: Expr, j: Expr) -> Expr:
        head = hh // group if group != 1 else hh
        if positions_first:
            return _f32(b[j, z, head, r] if transpose_b else b[r, z, head, j])
        return _f32(b[z, head, j, r] if transpose_b else b[z, head, r, j])

    body = lambda z, hh, i, j: te.sum(_f32(a[z, hh, i, r]) * rhs(z, hh, j), r)  # noqa: E731
    if dtype == "float32":
        return te.compute((bz, h, m, n), body, name)
    acc = te.compute((bz, h, m, n), body, name + "_acc")
    return te.compute((bz, h, m, n), lambda z, hh, i, j: cast(dtype, acc[z, hh, i, j]), name)


def rmsnorm_compute(
    x: te.Tensor, weight: te.Tensor, eps: float = 1e-5, name: str = "rmsnorm"
) -> te.Tensor:
    """y = x * rsqrt(mean(x^2) + eps) * weight, per row."""
    m, n = x.shape
    r = te.reduce_axis(n, "k")
    ss = te.compute((m,), lambda i: te.sum(_f32(x[i, r]) * _f32(x[i, r]), r), name + "_sumsq")
    return te.compute(
        (m, n),
        lambda i, j: cast(
            x.dtype, _f32(x[i, j]) * rsqrt(ss[i] / _as_f32_dim(n) + eps) * _f32(weight[j])
        ),
        name,
    )


def layernorm_compute(
    x: te.Tensor, gamma: te.Tensor, beta: te.Tensor, eps: float = 1e-5, name: str = "layernorm"
) -> te.Tensor:
    """y = (x - mean) * rsqrt(var + eps) * gamma + beta, per row (two-pass variance)."""
    m, n = x.shape
    r1 = te.reduce_axis(n, "k")
    r2 = te.reduce_axis(n, "k")
    total = te.compute((m,), lambda i: te.sum(_f32(x[i, r1]), r1), name + "_sum")
    nf = _as_f32_dim(n)
    sq = te.compute(
        (m,),
        lambda i: te.sum((_f32(x[i, r2]) - total[i] / nf) * (_f32(x[i, r2]) - total[i] / nf), r2),
        name + "_sqsum",
    )
    return te.compute(
        (m, n),
        lambda i, j: cast(
            x.dtype,
            (_f32(x[i, j]) - total[i] / nf) * rsqrt(sq[i] / nf + eps) * _f32(gamma[j])
            + _f32(beta[j]),
        ),
        name,
    )


def softmax_compute(x: te.Tensor, name: str = "softmax") -> te.Tensor:
    """Row softmax, numerically stable: exp(x - max) / sum(exp(x - max))."""
    m, n = x.shape
    r1 = te.reduce_axis(n, "k")
    r2 = te.reduce_axis(n, "k")
    mx = te.compute((m,), lambda i: te.max(_f32(x[i, r1]), r1), name + "_max")
    den = te.compute((m,), lambda i: te.sum(exp(_f32(x[i, r2]) - mx[i]), r2), name + "_sum")
    return te.compute((m, n), lambda i, j: cast(x.dtype, exp(_f32(x[i, j]) - mx[i]) / den[i]), name)


def rope_compute(x: te.Tensor, cos: te.Tensor, sin: te.Tensor, name: str = "rope") -> te.Tensor:
    """Rotary embedding, rotate-half form: x*cos + rotate_half(x)*sin over x[m, heads, d].

    cos and sin are float32 tables [m, d // 2] for the tokens' positions.
    """
    m, h, d = x.shape
    half = d // 2

    def body(t: Expr, hh: Expr, j: Expr) -> Expr:
        jj = j % half
        other = _f32(x[t, hh, (j + half) % d])
        sign = select(j < half, -1.0, 1.0)
        return cast(x.dtype, _f32(x[t, hh, j]) * cos[t, jj] + sign * other * sin[t, jj])

    return te.compute((m, h, d), body, name)


def silu_mul_compute(gate: te.Tensor, up: te.Tensor, name: str = "silu_mul") -> te.Tensor:
    """SwiGLU: silu(gate) * up = gate / (1 + exp(-gate)) * up."""
    m, n = gate.shape
    return te.compute(
        (m, n),
        lambda i, j: cast(
            gate.dtype, _f32(gate[i, j]) / (1.0 + exp(-_f32(gate[i, j]))) * _f32(up[i, j])
        ),
        name,
    )


def gelu_compute(x: te.Tensor, approximate: str = "none", name: str = "gelu") -> te.Tensor:
    """GELU, exact (erf) or the tanh approximation."""
    m, n = x.shape
    if approximate == "tanh":
        c = math.sqrt(2.0 / math.pi)

        def body(i: Expr, j: Expr) -> Expr:
            v = _f32(x[i, j])
            return cast(x.dtype, 0.5 * v * (1.0 + tanh(c * (v + 0.044715 * v * v * v))))

    else:

        def body(i: Expr, j: Expr) -> Expr:
            v = _f32(x[i, j])
            return cast(x.dtype, 0.5 * v * (1.0 + erf(v * (1.0 / math.sqrt(2.0)))))

    return te.compute((m, n), body, name)


def add_compute(a: te.Tensor, b: te.Tensor, name: str = "add") -> te.Tensor:
    """Elementwise a + b (same shapes), computed in float32."""
    return te.compute(a.shape, lambda *idx: cast(a.dtype, _f32(a[idx]) + _f32(b[idx])), name)


def q4_dense_compute(
    x: te.Tensor,
    qweight: te.Tensor,
    scales: te.Tensor,
    group_size: int = 32,
    name: str = "q4_dense",
) -> te.Tensor:
    """y = x . dequant(W)^T with 4-bit weights dequantised in the kernel.

    qweight[n, k/8] is uint32 (nibble t of word w is element 8w+t); an element's value is
    (nibble - 8) * scales[n, k/group_size] (fp16).
    """
    m, k = x.shape
    n = qweight.shape[0]
    r = te.reduce_axis(k, "k")

    def weight(j: Expr, kk: Expr) -> Expr:
        nib = (qweight[j, kk // 8] >> ((kk % 8) * 4)) & 15
        return (cast("float32", nib) - 8.0) * _f32(scales[j, kk // group_size])

    dtype = x.dtype
    direct = dtype == "float32"
    acc = te.compute(
        (m, n),
        lambda i, j: te.sum(_f32(x[i, r]) * weight(j, r), r),
        name if direct else name + "_acc",
    )
    if direct:
        return acc
    return te.compute((m, n), lambda i, j: cast(dtype, acc[i, j]), name)


# ---------------------------------------------------------------- references


def _f(a: np.ndarray) -> np.ndarray:
    """Host array as float64 (bf16 bit patterns decoded)."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        return to_float32(a, "bfloat16").astype(np.float64)
    return a.astype(np.float64)


def _dense_ref(x: np.ndarray, w: np.ndarray, *rest: np.ndarray, **_: Any) -> np.ndarray:
    y = _f(x) @ _f(w).T
    if rest:  # the optional bias
        y = y + _f(rest[0])
    return y.astype(np.float32)


def _matmul_ref(a: np.ndarray, b: np.ndarray, **_: Any) -> np.ndarray:
    return (_f(a) @ _f(b)).astype(np.float32)


def _bmm_ref(
    a: np.ndarray, b: np.ndarray, transpose_b: bool = True, group: int = 1, **_: Any
) -> np.ndarray:
    bb = _f(b)
    if group != 1:
        bb = np.repeat(bb, group, axis=1)
    if transpose_b:
        bb = np.swapaxes(bb, -1, -2)
    return np.matmul(_f(a), bb).astype(np.float32)


def _rmsnorm_ref(x: np.ndarray, weight: np.ndarray, eps: float = 1e-5, **_: Any) -> np.ndarray:
    xf = _f(x)
    return (xf / np.sqrt(np.mean(xf * xf, axis=-1, keepdims=True) + eps) * _f(weight)).astype(
        np.float32
    )


def _layernorm_ref(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5, **_: Any
) -> np.ndarray:
    xf = _f(x)
    mu = xf.mean(axis=-1, keepdims=True)
    var = ((xf - mu) ** 2).mean(axis=-1, keepdims=True)
    return ((xf - mu) / np.sqrt(var + eps) * _f(gamma) + _f(beta)).astype(np.float32)


def _softmax_ref(x: np.ndarray, **_: Any) -> np.ndarray:
    xf = _f(x)
    e = np.exp(xf - xf.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _rope_ref(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, **_: Any) -> np.ndarray:
    xf = _f(x)
    half = xf.shape[-1] // 2
    c = np.concatenate([_f(cos), _f(cos)], axis=-1)[:, None, :]
    s = np.concatenate([_f(sin), _f(sin)], axis=-1)[:, None, :]
    rot = np.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * c + rot * s).astype(np.float32)


def _silu_mul_ref(gate: np.ndarray, up: np.ndarray, **_: Any) -> np.ndarray:
    g = _f(gate)
    return (g / (1.0 + np.exp(-g)) * _f(up)).astype(np.float32)


def _gelu_ref(x: np.ndarray, approximate: str = "none", **_: Any) -> np.ndarray:
    v = _f(x)
    if approximate == "tanh":
        out = 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v**3)))
    else:
        erf_v = np.vectorize(math.erf)(v / math.sqrt(2.0)) if v.size else v
        out = 0.5 * v * (1.0 + erf_v)
    return out.astype(np.float32)


def _add_ref(a: np.ndarray, b: np.ndarray, **_: Any) -> np.ndarray:
    return (_f(a) + _f(b)).astype(np.float32)


def dequantize_q4(qweight: np.ndarray, scales: np.ndarray, group_size: int) -> np.ndarray:
    """Unpack 4-bit weights [n, k/8] uint32 with scales [n, k/group] into float64 [n, k]."""
    n, words = qweight.shape
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    nib = (qweight.astype(np.uint32)[:, :, None] >> shifts) & np.uint32(15)
    w = nib.reshape(n, words * 8).astype(np.float64) - 8.0
    return w * np.repeat(np.asarray(scales).astype(np.float64), group_size, axis=1)


def _q4_dense_ref(
    x: np.ndarray, qweight: np.ndarray, scales: np.ndarray, group_size: int = 32, **_: Any
) -> np.ndarray:
    return (_f(x) @ dequantize_q4(qweight, scales, group_size).T).astype(np.float32)


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class InputSpec:
    """One input of an op: name, shape as a function of the dims, dtype rule, value scale."""

    name: str
    shape: Callable[[Mapping[str, Any], Mapping[str, Any]], tuple[Any, ...]]
    dtype: str | None = None  # None: the op's dtype
    kind: str = "normal"  # "normal" | "uniform_pos" | "q4" | "angle"


@dataclass(frozen=True)
class OpDef:
    """A library operator: shape parameters, example shape, attribute defaults, builders."""

    name: str
    params: tuple[str, ...]
    example: dict[str, int]
    attrs: dict[str, Any]
    inputs: tuple[InputSpec, ...]
    compute_fn: Callable[..., te.Tensor]
    reference_fn: Callable[..., np.ndarray]
    doc: str = ""
    input_attrs: tuple[str, ...] = field(default=())  # attrs passed to the compute function

    def _attrs(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            known = ", ".join(sorted(self.attrs)) or "none"
            raise OpArgumentError(
                f"{self.name}: unknown attribute(s) {sorted(unknown)}; known: {known}"
            )
        out = dict(self.attrs)
        out.update(attrs)
        return out

    def _dims(self, shape: Mapping[str, Any]) -> dict[str, Any]:
        missing = [p for p in self.params if p not in shape]
        extra = [p for p in shape if p not in self.params]
        if missing or extra:
            raise OpArgumentError(
                f"{self.name} takes shape parameters {', '.join(self.params)}"
                + (f"; missing {', '.join(missing)}" if missing else "")
                + (f"; unknown {', '.join(extra)}" if extra else "")
            )
        dims = {}
        for p in self.params:
            v = shape[p]
            if isinstance(v, Var):
                dims[p] = v
            elif isinstance(v, int | np.integer) and int(v) > 0:
                dims[p] = int(v)
            else:
                raise OpArgumentError(
                    f"{self.name}: shape parameter {p} must be a positive int or a Var, got {v!r}"
                )
        return dims

    def _check(self, dims: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
        check = _CHECKS.get(self.name)
        if check is not None:
            msg = check(dims, attrs)
            if msg:
                raise OpArgumentError(f"{self.name}: {msg}")

    def build(
        self, shape: Mapping[str, int | Var], dtype: str = "float32", **attrs: Any
    ) -> PrimFunc:
        """The op's PrimFunc at these shape parameters (ints or symbolic Vars)."""
        if dtype not in FLOAT_DTYPES:
            raise OpArgumentError(
                f"{self.name}: dtype must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}"
            )
        a = self._attrs(attrs)
        dims = self._dims(shape)
        self._check(dims, a)
        tensors = []
        for spec in self.inputs:
            if spec.name == "bias" and not a.get("bias", False):
                continue
            tensors.append(te.placeholder(spec.shape(dims, a), spec.dtype or dtype, spec.name))
        kwargs = {k: a[k] for k in self.input_attrs}
        if self.name == "dense":
            out = self.compute_fn(tensors[0], tensors[1], tensors[2] if a["bias"] else None)
        else:
            out = self.compute_fn(*tensors, **kwargs)
        return te.create_prim_func([*tensors, out], name=self.name)

    def reference(self, *inputs: np.ndarray, **attrs: Any) -> np.ndarray:
        """The expected output (float32) computed in float64 from the inputs."""
        a = self._attrs(attrs)
        return self.reference_fn(*inputs, **a)

    def make_inputs(
        self, shape_values: Mapping[str, int], dtype: str, rng: np.random.Generator, **attrs: Any
    ) -> list[np.ndarray]:
        """Valid random inputs in the PrimFunc's parameter order (bf16 as uint16 bit patterns)."""
        a = self._attrs(attrs)
        dims = self._dims(shape_values)
        self._check(dims, a)
        out = []
        for spec in self.inputs:
            if spec.name == "bias" and not a.get("bias", False):
                continue
            shp = tuple(int(s) for s in spec.shape(dims, a))
            dt = spec.dtype or dtype
            if spec.kind == "q4":
                arr = rng.integers(0, 2**32, size=shp, dtype=np.uint64).astype(np.uint32)
            elif spec.kind == "uniform_pos":
                arr = from_float32(rng.uniform(0.5, 1.5, size=shp).astype(np.float32), dt)
            elif spec.kind == "scale":
                arr = rng.uniform(0.005, 0.05, size=shp).astype(numpy_dtype(dt))
            elif spec.kind == "angle":
                arr = from_float32(rng.uniform(-1.0, 1.0, size=shp).astype(np.float32), dt)
            else:
                arr = from_float32(rng.standard_normal(size=shp).astype(np.float32), dt)
            out.append(arr)
        return out

    def func_inputs(self, attrs: Mapping[str, Any] | None = None) -> tuple[str, ...]:
        """Names of the PrimFunc's inputs for these attributes, in order."""
        a = self._attrs(attrs or {})
        return tuple(
            s.name for s in self.inputs if not (s.name == "bias" and not a.get("bias", False))
        )


def _hkv(d: Mapping[str, Any], a: Mapping[str, Any]) -> Any:
    g = a["group"]
    return d["h"] // g if g != 1 else d["h"]


def _check_rope(d: Mapping[str, Any], a: Mapping[str, Any]) -> str | None:
    if isinstance(d["d"], int) and d["d"] % 2:
        return f"head dim d={d['d']} must be even"
    return None


def _check_bmm(d: Mapping[str, Any], a: Mapping[str, Any]) -> str | None:
    g = a["group"]
    if not isinstance(g, int) or g < 1:
        return f"group must be a positive int, got {g!r}"
    if isinstance(d["h"], int) and d["h"] % g:
        return f"h={d['h']} must be a multiple of group={g}"
    return None


def _check_q4(d: Mapping[str, Any], a: Mapping[str, Any]) -> str | None:
    gs = a["group_size"]
    if not isinstance(gs, int) or gs <= 0 or gs % 8:
        return f"group_size must be a positive multiple of 8, got {gs!r}"
    if isinstance(d["k"], int) and d["k"] % gs:
        return f"k={d['k']} must be a multiple of group_size={gs}"
    return None


def _check_gelu(d: Mapping[str, Any], a: Mapping[str, Any]) -> str | None:
    if a["approximate"] not in ("none", "tanh"):
        return f"approximate must be 'none' or 'tanh', got {a['approximate']!r}"
    return None


_CHECKS: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], str | None]] = {
    "rope": _check_rope,
    "batch_matmul": _check_bmm,
    "q4_dense": _check_q4,
    "gelu": _check_gelu,
}


def _div(a: Any, b: int) -> Any:
    return a // b


_OPS: dict[str, OpDef] = {}


def _register(op: OpDef) -> None:
    _OPS[op.name] = op


_register(
    OpDef(
        "dense",
        ("m", "n", "k"),
        {"m": 32, "n": 4096, "k": 4096},
        {"bias": False},
        (
            InputSpec("x", lambda d, a: (d["m"], d["k"])),
            InputSpec("w", lambda d, a: (d["n"], d["k"])),
            InputSpec("bias", lambda d, a: (d["n"],)),
        ),
        dense_compute,
        _dense_ref,
        "x[m,k] . w[n,k]^T (+ bias[n]): the Linear layer",
    )
)
_register(
    OpDef(
        "matmul",
        ("m", "n", "k"),
        {"m": 1024, "n": 1024, "k": 1024},
        {},
        (
            InputSpec("a", lambda d, a: (d["m"], d["k"])),
            InputSpec("b", lambda d, a: (d["k"], d["n"])),
        ),
        matmul_compute,
        _matmul_ref,
        "a[m,k] . b[k,n]",
    )
)
_register(
    OpDef(
        "batch_matmul",
        ("b", "h", "m", "n", "k"),
        {"b": 1, "h": 32, "m": 128, "n": 128, "k": 128},
        {"transpose_b": True, "group": 1},
        (
            InputSpec("a", lambda d, a: (d["b"], d["h"], d["m"], d["k"])),
            InputSpec(
                "b",
                lambda d, a: (
                    (d["b"], _hkv(d, a), d["n"], d["k"])
                    if a["transpose_b"]
                    else (d["b"], _hkv(d, a), d["k"], d["n"])
                ),
            ),
        ),
        batch_matmul_compute,
        _bmm_ref,
        "a[b,h,m,k] . b[b,h/group,n,k]^T (or b[b,h/group,k,n]): attention q.k^T and p.v with GQA",
        ("transpose_b", "group"),
    )
)
_register(
    OpDef(
        "rmsnorm",
        ("m", "n"),
        {"m": 32, "n": 4096},
        {"eps": 1e-5},
        (
            InputSpec("x", lambda d, a: (d["m"], d["n"])),
            InputSpec("weight", lambda d, a: (d["n"],), kind="uniform_pos"),
        ),
        rmsnorm_compute,
        _rmsnorm_ref,
        "x * rsqrt(mean(x^2) + eps) * weight per row",
        ("eps",),
    )
)
_register(
    OpDef(
        "layernorm",
        ("m", "n"),
        {"m": 32, "n": 4096},
        {"eps": 1e-5},
        (
            InputSpec("x", lambda d, a: (d["m"], d["n"])),
            InputSpec("gamma", lambda d, a: (d["n"],), kind="uniform_pos"),
            InputSpec("beta", lambda d, a: (d["n"],)),
        ),
        layernorm_compute,
        _layernorm_ref,
        "(x - mean) * rsqrt(var + eps) * gamma + beta per row",
        ("eps",),
    )
)
_register(
    OpDef(
        "softmax",
        ("m", "n"),
        {"m": 256, "n": 2048},
        {},
        (InputSpec("x", lambda d, a: (d["m"], d["n"])),),
        softmax_compute,
        _softmax_ref,
        "numerically stable row softmax",
    )
)
_register(
    OpDef(
        "rope",
        ("m", "h", "d"),
        {"m": 32, "h": 32, "d": 128},
        {},
        (
            InputSpec("x", lambda d, a: (d["m"], d["h"], d["d"])),
            InputSpec("cos", lambda d, a: (d["m"], _div(d["d"], 2)), "float32", "angle"),
            InputSpec("sin", lambda d, a: (d["m"], _div(d["d"], 2)), "float32", "angle"),
        ),
        rope_compute,
        _rope_ref,
        "rotary embedding (rotate-half) with float32 cos/sin tables [m, d/2]",
    )
)
_register(
    OpDef(
        "silu_mul",
        ("m", "n"),
        {"m": 32, "n": 14336},
        {},
        (
            InputSpec("gate", lambda d, a: (d["m"], d["n"])),
            InputSpec("up", lambda d, a: (d["m"], d["n"])),
        ),
        silu_mul_compute,
        _silu_mul_ref,
        "SwiGLU: silu(gate) * up",
    )
)
_register(
    OpDef(
        "gelu",
        ("m", "n"),
        {"m": 32, "n": 4096},
        {"approximate": "none"},
        (InputSpec("x", lambda d, a: (d["m"], d["n"])),),
        gelu_compute,
        _gelu_ref,
        "GELU (erf, or tanh approximation)",
        ("approximate",),
    )
)
_register(
    OpDef(
        "add",
        ("m", "n"),
        {"m": 32, "n": 4096},
        {},
        (
            InputSpec("a", lambda d, a: (d["m"], d["n"])),
            InputSpec("b", lambda d, a: (d["m"], d["n"])),
        ),
        add_compute,
        _add_ref,
        "elementwise a + b (residual add)",
    )
)
_register(
    OpDef(
        "q4_dense",
        ("m", "n", "k"),
        {"m": 1, "n": 4096, "k": 4096},
        {"group_size": 32},
        (
            InputSpec("x", lambda d, a: (d["m"], d["k"])),
            InputSpec("qweight", lambda d, a: (d["n"], _div(d["k"], 8)), "uint32", "q4"),
            InputSpec(
                "scales", lambda d, a: (d["n"], _div(d["k"], a["group_size"])), "float16", "scale"
            ),
        ),
        q4_dense_compute,
        _q4_dense_ref,
        "x . dequant(W)^T with 4-bit group-quantised weights (uint32 packed, fp16 scales)",
        ("group_size",),
    )
)


def get_op(name: str) -> OpDef:
    """The op called `name`; raises UnknownOpError naming the known ops otherwise."""
    try:
        return _OPS[name]
    except KeyError:
        raise UnknownOpError(f"unknown op {name!r}; known ops: {', '.join(sorted(_OPS))}") from None


def list_ops() -> list[OpDef]:
    """All ops, sorted by name."""
    return [_OPS[k] for k in sorted(_OPS)]


def tolerance(dtype: str) -> tuple[float, float]:
    """(rtol, atol) for comparing an op's output in `dtype` with its float64 reference."""
    return {"float32": (1e-3, 1e-3), "float16": (1e-2, 1e-2), "bfloat16": (3e-2, 3e-2)}[dtype]
