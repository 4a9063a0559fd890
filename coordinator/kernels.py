"""Lowering fused graph calls to ir PrimFuncs: the workloads that get tuned.

A single call is built by its op library entry (`ir.ops.get_op(op).build(...)`), so a task's
workload key equals the key of the same op built anywhere else. A fused call is composed from
the ops' compute functions with the ir tensor-expression frontend; the intermediate tensors
become buffers allocated inside the PrimFunc, so the roofline bytes count only what the kernel
reads and writes. Symbolic dims become `ir.Var("b")`, `ir.Var("n")`, `ir.Var("m")`.

Kernel layouts: q/k/v heads are `[tokens, heads, head_dim]`; attention reads
`q[b, h, n, d]` and the caches `[b, kv_heads, m, d]`; the attention scale 1/sqrt(d) is folded
into the query projection's weights, so no kernel multiplies by it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tunefleet.coordinator.fusion import FusedCall
from tunefleet.coordinator.graph import Graph, OpCall, Phase
from tunefleet.coordinator.lowering import Kernel
from tunefleet.coordinator.symbolic import Dim
from tunefleet.ir import (
    Const,
    Expr,
    PrimFunc,
    Var,
    bytes_moved,
    cast,
    compute,
    create_prim_func,
    exp,
    flops,
    min_,
    placeholder,
    reduce_axis,
    reduce_max,
    reduce_sum,
    select,
    structural_hash,
)
from tunefleet.ir import ops as irops
from tunefleet.ir.default_key_tiles import key_tiled, rescored_block
from tunefleet.ir.tensor_expr import Tensor as TeTensor


class LoweringError(ValueError):
    """A fused call that has no ir form."""


def ir_dim(d: Dim) -> int | Expr:
    """A graph dim as an ir shape entry: an int, a Var, or a product of Vars."""
    if d.is_static:
        return d.coeff
    expr: Expr = Var(d.vars[0])
    for v in d.vars[1:]:
        expr = expr * Var(v)
    return expr if d.coeff == 1 else d.coeff * expr


def _shape(call: OpCall) -> dict[str, Any]:
    return {k: ir_dim(v) for k, v in call.params}


def _f32(e: Any) -> Expr:
    return cast("float32", e)


# ------------------------------------------------------------------- fused kernel builders


def _dense_inputs(call: OpCall) -> tuple[list[TeTensor], TeTensor]:
    """Placeholders of a dense/q4_dense call and its output tensor."""
    s, a, dt = _shape(call), call.attr, call.dtype
    x = placeholder((s["m"], s["k"]), dt, "x")
    if call.op == "q4_dense":
        gs = a["group_size"]
        qw = placeholder((s["n"], s["k"] // 8), "uint32", "qweight")
        sc = placeholder((s["n"], s["k"] // gs), "float16", "scales")
        y = irops.q4_dense_compute(x, qw, sc, gs)
        if not a.get("bias"):
            return [x, qw, sc], y
        bias = placeholder((s["n"],), dt, "bias")  # the library's q4_dense has none
        out = compute(y.shape, lambda i, j: cast(dt, _f32(y[i, j]) + _f32(bias[j])), "bias_add")
        return [x, qw, sc, bias], out
    w = placeholder((s["n"], s["k"]), dt, "w")
    if a.get("bias"):
        bias = placeholder((s["n"],), dt, "bias")
        return [x, w, bias], irops.dense_compute(x, w, bias)
    return [x, w], irops.dense_compute(x, w)


def _grid_dense(call: OpCall, grid: tuple[Any, ...]) -> tuple[list[TeTensor], TeTensor]:
    """A dense/q4_dense call with its `n` output columns laid out on `grid` (row-major), and
    its weights (and bias) viewed the same way: `w[*grid, k]` is the memory of `w[n, k]`.
    The products and roundings are the plain dense's; an epilogue that pairs columns reads
    one tile of the grid, and the weight rows of a tile are one box."""
    s, a, dt = _shape(call), call.attr, call.dtype
    x = placeholder((s["m"], s["k"]), dt, "x")
    r = reduce_axis(s["k"], "k")
    if call.op == "q4_dense":
        gs = a["group_size"]
        qw = placeholder((*grid, s["k"] // 8), "uint32", "qweight")
        sc = placeholder((*grid, s["k"] // gs), "float16", "scales")
        ins = [x, qw, sc]

        def weight(g: tuple[Expr, ...], kk: Expr) -> Expr:
            nib = (qw[(*g, kk // 8)] >> ((kk % 8) * 4)) & 15
            return (cast("float32", nib) - 8.0) * _f32(sc[(*g, kk // gs)])

    else:
        w = placeholder((*grid, s["k"]), dt, "w")
        ins = [x, w]

        def weight(g: tuple[Expr, ...], kk: Expr) -> Expr:
            return _f32(w[(*g, kk)])

    name = call.op
    shape = (s["m"], *grid)
    acc = compute(shape, lambda i, *g: reduce_sum(_f32(x[i, r]) * weight(g, r), r), name + "_acc")
    if not a.get("bias"):
        return ins, compute(shape, lambda i, *g: cast(dt, acc[(i, *g)]), name)
    bias = placeholder(grid, dt, "bias")
    if call.op == "q4_dense":  # the library's q4_dense rounds before the bias is added
        y = compute(shape, lambda i, *g: cast(dt, acc[(i, *g)]), name)
        out = compute(shape, lambda i, *g: cast(dt, _f32(y[(i, *g)]) + _f32(bias[g])),
                      "bias_add")  # fmt: skip
        return [*ins, bias], out
    out = compute(shape, lambda i, *g: cast(dt, acc[(i, *g)] + _f32(bias[g])), name)
    return [*ins, bias], out


def _dense_add(calls: tuple[OpCall, ...], phase: Phase) -> PrimFunc:
    """y = x . W^T + residual."""
    ins, y = _dense_inputs(calls[0])
    res = placeholder(y.shape, calls[0].dtype, "residual")
    out = irops.add_compute(y, res, "residual_add")
    return create_prim_func([*ins, res, out], name="dense_add")


def _dense_act(calls: tuple[OpCall, ...], phase: Phase) -> PrimFunc:
    """act(gate) * up over the two column halves of one dense, laid out `[tokens, 2, inter]`
    with the weight viewed `[2, inter, k]`: gate column j and up column inter + j in one tile."""
    inter = _shape(calls[1])["n"]
    ins, gu = _grid_dense(calls[0], (2, inter))
    gate = compute((gu.shape[0], inter), lambda i, j: gu[i, 0, j], "gate")
    up = compute((gu.shape[0], inter), lambda i, j: gu[i, 1, j], "up")
    out = _activation(calls[1].op, gate, up)
    return create_prim_func([*ins, out], name="dense_" + calls[1].op)


def _activation(op: str, gate: TeTensor, up: TeTensor) -> TeTensor:
    if op == "silu_mul":
        return irops.silu_mul_compute(gate, up)
    act = irops.gelu_compute(gate, "tanh")
    return compute(gate.shape, lambda i, j: cast(gate.dtype, _f32(act[i, j]) * _f32(up[i, j])),
                   "gelu_mul")  # fmt: skip


def _gelu_mul(calls: tuple[OpCall, ...], phase: Phase) -> PrimFunc:
    """GeGLU on a `[tokens, 2*inter]` gate|up tensor (no library op: gelu and a multiply)."""
    s, dt = _shape(calls[0]), calls[0].dtype
    gu = placeholder((s["m"], 2 * s["n"]), dt, "gate_up")
    gate = compute((s["m"], s["n"]), lambda i, j: gu[i, j], "gate")
    up = compute((s["m"], s["n"]), lambda i, j: gu[i, j + s["n"]], "up")
    return create_prim_func([gu, _activation("gelu_mul", gate, up)], name="gelu_mul")


def _dense_rope(calls: tuple[OpCall, ...], phase: Phase) -> PrimFunc:
    """q|k|v projection with rope on the q and k heads, written as one
    `[tokens, heads, 2, d/2]` tensor (the memory of `[tokens, heads, d]`) whose v heads pass
    through unrotated.

    One output (the graph's rope output) lets a GPU schedule compute each head's projection
    where the head is written; two outputs fed by one reduction cannot share it in a kernel.
    The halves that rope pairs are an axis of their own (element j of the first half turns
    with element j of the second; the weight is viewed `[heads, 2, d/2, k]`), so a tile of
    (head, j) holds both products of a pair.
    """
    r = _shape(calls[1])
    h, kv, d = r["h"], r["kv"], r["d"]
    half = d // 2
    ins, y = _grid_dense(calls[0], (h + 2 * kv, 2, half))
    t = y.shape[0]
    cos = placeholder((t, half), "float32", "cos")
    sin = placeholder((t, half), "float32", "sin")
    dt = calls[0].dtype

    def body(i: Expr, hh: Expr, p: Expr, j: Expr) -> Expr:
        other = _f32(y[i, hh, 1 - p, j])
        sign = select(p < 1, -1.0, 1.0)
        turned = cast(dt, _f32(y[i, hh, p, j]) * cos[i, j] + sign * other * sin[i, j])
        return select(hh < h + kv, turned, y[i, hh, p, j])

    out = compute(y.shape, body, "qkv_rope")
    return create_prim_func([*ins, cos, sin, out], name="dense_rope")


def _attention(calls: tuple[OpCall, ...], phase: Phase) -> PrimFunc:
    """softmax(q . k^T (causal in prefill)) . v with grouped-query heads, one kernel; a
    prompt's in key tiles (`_attention_key_tiles`) over its keys `[b, kv, m, d]`, a decode
    step's with its scores whole over the kv cache as it stands: position-major,
    `[m, b, kv, d]`, the first m rows of the session's `[max_len, b, kv, d]` cache (nothing
    is copied per step)."""
    s, dt = _shape(calls[0]), calls[0].dtype
    b, h, kv, n, m, d = (s[k] for k in ("b", "h", "kv", "n", "m", "d"))
    group = calls[0].attr.get("group", 1)
    q = placeholder((b, h, n, d), dt, "q")
    if phase is Phase.PREFILL:
        k = placeholder((b, kv, m, d), dt, "k_cache")
        v = placeholder((b, kv, m, d), dt, "v_cache")
        return _attention_key_tiles(q, k, v, group)
    k = placeholder((m, b, kv, d), dt, "k_cache")
    v = placeholder((m, b, kv, d), dt, "v_cache")
    scores = irops.batch_matmul_compute(q, k, True, group, "float32", "scores", True)
    r1, r2 = reduce_axis(m, "k"), reduce_axis(m, "k")
    mx = compute((b, h, n), lambda z, hh, i: reduce_max(scores[z, hh, i, r1], r1), "row_max")
    den = compute((b, h, n),
                  lambda z, hh, i: reduce_sum(exp(scores[z, hh, i, r2] - mx[z, hh, i]), r2),
                  "row_sum")  # fmt: skip
    probs = compute(scores.shape,
                    lambda z, hh, i, j: cast(dt, exp(scores[z, hh, i, j] - mx[z, hh, i])
                                             / den[z, hh, i]), "probs")  # fmt: skip
    out = irops.batch_matmul_compute(probs, v, False, group, dt, "context", True)
    return create_prim_func([q, k, v, out], name="attention")


def _attention_key_tiles(q: TeTensor, k: TeTensor, v: TeTensor, group: int) -> PrimFunc:
    """Causal attention as two plain reductions over the keys, each scoring them afresh, so
    a schedule can walk the keys in tiles and never hold a row's scores
    (`ir.default_key_tiles`): the row's max, then the context with one more column, of
    ones, which sums the weights the output divides by.

        mx[i] = max_j s(i, j);  acc[i, c] = sum_j exp(s(i, j) - mx[i]) * (v[j, c] or 1 at c = d)
        out[i, c] = acc[i, c] / acc[i, d]

    Both reductions are masked (the max over `select(j <= i + m - n, s, -inf)`, the sums over
    `select(j <= i + m - n, p, 0) * v`), so a schedule may stop a row tile's key loops at its
    last visible key (`ir.prim_mask.trim_masked`). The sums' select is on the weight, once
    per row and key, not on each of the d + 1 products.
    """
    b, h, n, d = q.shape
    m = k.shape[2]
    dt = q.dtype
    dim = int(d.value) if isinstance(d, Const) else d

    def visible(i: Expr, j: Expr) -> Expr:  # new token i sits at position m - n + i
        return j <= i + (m - n)

    first = irops.batch_matmul_compute(q, k, True, group, "float32", "scores")
    r1 = reduce_axis(m, "k")
    mx = compute((b, h, n),
                 lambda z, hh, i: reduce_max(select(visible(i, r1), first[z, hh, i, r1],
                                                    float("-inf")), r1), "row_max")  # fmt: skip
    again = irops.batch_matmul_compute(q, k, True, group, "float32", "scores_again")
    # unmasked: the sums mask the weight; a key past the mask may score above the max, so
    # the exponent is capped at 0 to keep every weight finite
    probs = compute(again.shape,
                    lambda z, hh, i, j: cast(dt, exp(min_(again[z, hh, i, j] - mx[z, hh, i],
                                                          0.0))),
                    "probs")  # fmt: skip
    r2 = reduce_axis(m, "k")

    def with_ones(z: Expr, kh: Expr, j: Expr, c: Expr) -> Expr:
        col = select(c < dim - 1, c, dim - 1)  # the ones column reads a real one, unused
        return select(c < dim, v[z, kh, j, col], cast(dt, 1.0))

    # the values and their column of ones as a block of their own: the default inlines it,
    # a tensor-core schedule stages a tile of it in shared memory as an MMA operand
    values = compute((b, k.shape[1], m, dim + 1), with_ones, "v_ones")

    def weighted(z: Expr, hh: Expr, i: Expr, c: Expr) -> Expr:
        head = hh // group if group != 1 else hh
        value = _f32(values[z, head, r2, c])
        return reduce_sum(select(visible(i, r2), _f32(probs[z, hh, i, r2]), 0.0) * value, r2)

    acc = compute((b, h, n, dim + 1), weighted, "context_acc")
    out = compute((b, h, n, d), lambda z, hh, i, c: cast(dt, acc[z, hh, i, c] / acc[z, hh, i, dim]),
                  "context")  # fmt: skip
    return create_prim_func([q, k, v, out], name="attention")


def _embedding(calls: tuple[OpCall, ...], phase: Phase) -> PrimFunc:
    """Row gather from the embedding table, times Gemma's sqrt(hidden) where it applies."""
    s, dt, scale = _shape(calls[0]), calls[0].dtype, calls[0].attr.get("scale", 1.0)
    ids = placeholder((s["m"],), "int32", "input_ids")
    table = placeholder((s["v"], s["n"]), dt, "table")
    if scale == 1.0:
        out = compute((s["m"], s["n"]), lambda i, j: table[cast("int64", ids[i]), j], "embed")
    else:
        out = compute((s["m"], s["n"]),
                      lambda i, j: cast(dt, _f32(table[cast("int64", ids[i]), j]) * scale),
                      "embed")  # fmt: skip
    return create_prim_func([ids, table, out], name="embedding")


_FUSED: dict[str, Callable[[tuple[OpCall, ...], Phase], PrimFunc]] = {
    "dense+add": _dense_add,
    "q4_dense+add": _dense_add,
    "dense+silu_mul": _dense_act,
    "q4_dense+silu_mul": _dense_act,
    "dense+gelu_mul": _dense_act,
    "q4_dense+gelu_mul": _dense_act,
    "dense+rope": _dense_rope,
    "q4_dense+rope": _dense_rope,
    "batch_matmul+softmax+batch_matmul": _attention,
    "embedding": _embedding,
    "gelu_mul": _gelu_mul,
}


def library_shape(op: str, s: Mapping[str, Any], attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A single call's graph params `s` (ir dims or ints) mapped onto its library op's.

    The kernel builder and a task's correctness problem (`task_problems`) share this map.
    """
    if op in ("dense", "q4_dense"):
        return {"m": s["m"], "n": s["n"], "k": s["k"]}
    if op == "batch_matmul":  # scores: [b,h,n,d] . [b,kv,m,d]^T; context: [b,h,n,m] . [b,kv,m,d]
        nk = {"n": s["m"], "k": s["d"]} if attrs["transpose_b"] else {"n": s["d"], "k": s["m"]}
        return {"b": s["b"], "h": s["h"], "m": s["n"], **nk}
    if op == "rope":
        return {"m": s["m"], "h": s["h"] + s["kv"], "d": s["d"]}
    if op in ("rmsnorm", "softmax", "silu_mul", "add"):
        return {"m": s["m"], "n": s["n"]}
    raise LoweringError(f"no ir form for op {op!r}")


def library_attrs(op: str, attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A single call's graph attributes mapped onto its library op's (rope's theta is in
    the cos/sin tables, not the kernel)."""
    if op == "dense":
        return {"bias": attrs["bias"]}
    if op == "q4_dense":
        return {"group_size": attrs["group_size"]}
    if op == "batch_matmul":
        return {"transpose_b": attrs["transpose_b"], "group": attrs.get("group", 1)}
    if op == "rmsnorm":
        return {"eps": attrs["eps"]}
    return {}


def _library_call(call: OpCall) -> PrimFunc:
    """A single call through the op library, its graph params mapped onto the op's."""
    s = _shape(call)
    if call.op == "q4_dense" and call.attr["bias"]:
        ins, out = _dense_inputs(call)
        return create_prim_func([*ins, out], name="q4_dense_bias")
    if call.op == "softmax" and not isinstance(s["m"], int | Var):
        # rows = heads x tokens: a product the library's shape check refuses; same compute
        x = placeholder((s["m"], s["n"]), call.dtype, "x")
        return create_prim_func([x, irops.softmax_compute(x)], name="softmax")
    shape = library_shape(call.op, s, call.attr)
    return irops.get_op(call.op).build(shape, call.dtype, **library_attrs(call.op, call.attr))


def build_func(group: FusedCall, phase: Phase) -> PrimFunc:
    """The PrimFunc of a fused call."""
    builder = _FUSED.get(group.op)
    if builder is not None:
        return builder(group.calls, phase)
    if len(group.calls) == 1:
        return _library_call(group.calls[0])
    raise LoweringError(f"no fused ir form for {group.op!r} ({group.name})")


def ir_kernel(group: FusedCall, graph: Graph) -> Kernel:
    """Lower a fused call through ir: workload key, FLOPs and bytes from the PrimFunc.

    Two counts come from the graph instead: a gather reads only the rows it takes, so an
    embedding's bytes are those rows, the ids and the output, not the whole table that
    `ir.bytes_moved` counts; and a q4 dense dequantises each weight once per tile in any real
    kernel, while `ir.flops` counts the dequantisation at every multiply-add of the loop nest
    as written (2.5x the work), so q4 FLOPs are the multiply-adds (and epilogues), like those
    of the dense layer they replace. A rope epilogue writes the v heads through a select whose
    rotation branch `ir.flops` counts as well, so its FLOPs are the graph's too. Attention in
    key tiles scores every key twice; its FLOPs leave the second scoring out (useful work).
    """
    func = build_func(group, graph.phase)
    fixed = dict(graph.fixed)

    if group.anchor.op == "q4_dense" or group.calls[-1].op == "rope":
        count_flops = group.flops
    else:
        again = (rescored_block(func),) if key_tiled(func) else ()

        def count_flops(dims: Mapping[str, int]) -> int:
            return flops(func, {**dims, **fixed}, again)

    if group.op == "embedding":
        count_bytes = group.nbytes
    else:

        def count_bytes(dims: Mapping[str, int]) -> int:
            return bytes_moved(func, {**dims, **fixed})

    return Kernel(structural_hash(func), count_flops, count_bytes, func)
