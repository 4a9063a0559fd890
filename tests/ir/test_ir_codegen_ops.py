"""Every op through lowering, C codegen and gcc matches its numpy reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ir_gcc_harness import check_against_reference, run_kernel

from tunefleet.ir import Var, ops
from tunefleet.ir.codegen import build_source
from tunefleet.ir.default_schedule import default_schedule
from tunefleet.ir.errors import CodegenError

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

ODD = {
    "dense": [{"m": 1, "n": 7, "k": 77}, {"m": 7, "n": 129, "k": 5}],
    "matmul": [{"m": 7, "n": 77, "k": 129}, {"m": 1, "n": 1, "k": 1}],
    "batch_matmul": [{"b": 1, "h": 4, "m": 7, "n": 77, "k": 5}],
    "rmsnorm": [{"m": 7, "n": 129}, {"m": 1, "n": 1}],
    "layernorm": [{"m": 7, "n": 77}],
    "softmax": [{"m": 7, "n": 129}, {"m": 1, "n": 1}],
    "rope": [{"m": 7, "h": 3, "d": 16}],
    "silu_mul": [{"m": 7, "n": 77}],
    "gelu": [{"m": 1, "n": 129}],
    "add": [{"m": 7, "n": 77}],
    "q4_dense": [{"m": 7, "n": 5, "k": 64}, {"m": 1, "n": 3, "k": 32}],
}
ATTRS = {
    "dense": [{}, {"bias": True}],
    "batch_matmul": [{"transpose_b": True, "group": 2}, {"transpose_b": False, "group": 4}],
    "gelu": [{}, {"approximate": "tanh"}],
    "q4_dense": [{"group_size": 32}, {"group_size": 16}],
}


def _cases():
    for op in ops.list_ops():
        for dims in ODD[op.name]:
            for attrs in ATTRS.get(op.name, [{}]):
                yield pytest.param(
                    op.name,
                    dims,
                    attrs,
                    id=f"{op.name}-{'-'.join(map(str, dims.values()))}-{attrs}",
                )


@pytest.mark.parametrize(("name", "dims", "attrs"), list(_cases()))
def test_op_default_schedule_matches_numpy(name, dims, attrs) -> None:
    op = ops.get_op(name)
    for dtype in ("float32", "float16", "bfloat16"):
        func = op.build(dims, dtype, **attrs)
        check_against_reference(default_schedule(func), op, dims, dtype, **attrs)


@pytest.mark.parametrize("name", [op.name for op in ops.list_ops()])
def test_op_with_symbolic_dims_bound_at_call_time(name) -> None:
    op = ops.get_op(name)
    attrs = ATTRS.get(name, [{}])[-1]
    dims = ODD[name][0]
    sym = {p: Var(p) for p in op.params}
    func = op.build(sym, "float32", **attrs)
    ks = build_source(default_schedule(func))
    assert [a.name for a in ks.scalar_args] == [v.name for v in func.shape_vars]
    check_against_reference(func, op, dims, "float32", **attrs)
    check_against_reference(default_schedule(func), op, dims, "float32", seed=3, **attrs)
    other = {k: v + (32 if k in ("k", "d") else 2) for k, v in dims.items()}
    if name == "batch_matmul":
        other["h"] = dims["h"] * 2
    check_against_reference(default_schedule(func), op, other, "float32", **attrs)


def test_call_description_lists_buffers_then_scalars() -> None:
    func = ops.get_op("dense").build({"m": Var("m"), "n": 64, "k": 32}, bias=True)
    ks = build_source(func)
    assert ks.lang == "c" and ks.entry == "dense_kernel"
    assert [(a.name, a.kind) for a in ks.args] == [
        ("x", "buffer"),
        ("w", "buffer"),
        ("bias", "buffer"),
        ("dense", "buffer"),
        ("m", "scalar"),
    ]
    assert ks.args[0].shape[1] == 32 and str(ks.args[0].shape[0]) == "m"
    assert ks.grid is None and ks.block is None and ks.shared_bytes is None
    assert "int64_t m" in ks.source and ks.entry in ks.source


def test_thread_bound_loop_is_rejected_on_cpu() -> None:
    from tunefleet.ir.schedule import Schedule

    sch = Schedule(ops.get_op("add").build({"m": 4, "n": 4}))
    i, _ = sch.get_loops(sch.get_block("add"))
    sch.bind(i, "blockIdx.x")
    with pytest.raises(CodegenError, match="cuda"):
        build_source(sch)


def test_fp16_and_bf16_outputs_round_like_numpy() -> None:
    op = ops.get_op("add")
    dims = {"m": 3, "n": 5}
    for dtype in ("float16", "bfloat16"):
        inputs = op.make_inputs(dims, dtype, np.random.default_rng(0))
        (out,) = run_kernel(build_source(op.build(dims, dtype)), inputs, dims)
        from tunefleet.ir.dtypes import from_float32

        want = from_float32(op.reference(*inputs), dtype)
        assert np.array_equal(out, want)


def test_integer_dtypes_through_gcc() -> None:
    from tunefleet.ir import (
        cast,
        compute,
        create_prim_func,
        placeholder,
        reduce_axis,
        reduce_max,
        reduce_sum,
    )

    m, n, k = Var("m"), 5, 77
    a = placeholder((m, k), "int8", "a")
    b = placeholder((n, k), "int8", "b")
    u = placeholder((m, k), "uint32", "u")
    r = reduce_axis(k, "r")
    r2 = reduce_axis(k, "r2")
    dot = compute(
        (m, n), lambda i, j: reduce_sum(cast("int32", a[i, r]) * cast("int32", b[j, r]), r), "dot"
    )
    bits = compute((m,), lambda i: reduce_max(cast("int32", (u[i, r2] >> 3) & 7) - 4, r2), "bits")
    func = create_prim_func([a, b, u, dot, bits])
    rng = np.random.default_rng(0)
    av = rng.integers(-128, 128, size=(7, k), dtype=np.int8)
    bv = rng.integers(-128, 128, size=(n, k), dtype=np.int8)
    uv = rng.integers(0, 2**32, size=(7, k), dtype=np.uint64).astype(np.uint32)
    got_dot, got_bits = run_kernel(build_source(default_schedule(func)), [av, bv, uv], {"m": 7})
    np.testing.assert_array_equal(got_dot, av.astype(np.int32) @ bv.astype(np.int32).T)
    np.testing.assert_array_equal(got_bits, (((uv >> 3) & 7).astype(np.int32) - 4).max(axis=1))
