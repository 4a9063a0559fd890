"""Nodes, simplifier, JSON, structural hash, op library, flops/bytes."""

from __future__ import annotations

import numpy as np
import pytest

from tunefleet.ir import (
    PrimFunc,
    Var,
    bytes_moved,
    compute,
    const,
    create_prim_func,
    floordiv,
    floormod,
    flops,
    ops,
    placeholder,
    reduce_axis,
    reduce_sum,
    simplify,
    structural_hash,
)
from tunefleet.ir.simplify import bounds


def test_simplify_split_and_fuse_indices() -> None:
    i0, i1, f = Var("i0"), Var("i1"), Var("f")
    ranges = {i0: (0, 15), i1: (0, 7), f: (0, 127)}
    assert simplify(floordiv(i0 * 8 + i1, 8), ranges) == i0
    assert simplify(floormod(i0 * 8 + i1, 8), ranges) == i1
    assert simplify((i0 * 8 + i1) - i0 * 8, ranges) == i1
    assert simplify(floordiv(floordiv(f, 4), 8), ranges) == floordiv(f, 32)
    assert simplify(const(3) * 4 + 2) == const(14)
    assert simplify(i1 < 8, ranges) == const(True)
    assert bounds(i0 * 8 + i1, ranges) == (0, 127)
    n = Var("n")
    assert simplify(floordiv(f, n) * n + floormod(f, n)) == f  # fuse then flatten, symbolic
    assert simplify(floordiv(f, 16) * 16 + floormod(f, 16) + 2) == f + 2


def test_simplify_keeps_values_for_random_points() -> None:
    rng = np.random.default_rng(0)
    a, b = Var("a"), Var("b")
    exprs = [floordiv(a * 6 + b + 5, 3), floormod(a * 4 + b * 2 + 7, 4), (a + b) * 3 - a * 2]
    for e in exprs:
        s = simplify(e, {a: (0, 9), b: (0, 9)})
        for _ in range(20):
            av, bv = (int(x) for x in rng.integers(0, 10, 2))
            env = {a: const(av), b: const(bv)}
            from tunefleet.ir.visit import substitute

            assert simplify(substitute(e, env)) == simplify(substitute(s, env))


def _matmul(m, n, k, names=("A", "B", "C"), dtype="float32"):
    a = placeholder((m, k), dtype, names[0])
    b = placeholder((k, n), dtype, names[1])
    r = reduce_axis(k, "r")
    c = compute((m, n), lambda i, j: reduce_sum(a[i, r] * b[r, j], r), names[2])
    return create_prim_func([a, b, c])


def test_structural_hash_ignores_names_but_not_content() -> None:
    base = structural_hash(_matmul(64, 64, 64))
    assert structural_hash(_matmul(64, 64, 64, names=("X", "Y", "Z"))) == base
    assert structural_hash(_matmul(64, 64, 32)) != base
    assert structural_hash(_matmul(64, 64, 64, dtype="float16")) != base
    assert structural_hash(_matmul(Var("m"), 64, 64)) != base
    assert structural_hash(_matmul(Var("m"), 64, 64)) == structural_hash(
        _matmul(Var("tokens"), 64, 64)
    )
    dense = ops.get_op("dense")
    assert structural_hash(dense.build({"m": 4, "n": 8, "k": 8})) != structural_hash(
        dense.build({"m": 4, "n": 8, "k": 8}, bias=True)
    )
    gelu = ops.get_op("gelu")
    assert structural_hash(gelu.build({"m": 4, "n": 8})) != structural_hash(
        gelu.build({"m": 4, "n": 8}, approximate="tanh")
    )


@pytest.mark.parametrize("op", ops.list_ops(), ids=lambda o: o.name)
def test_every_op_builds_round_trips_and_counts(op: ops.OpDef) -> None:
    for dtype in ops.FLOAT_DTYPES:
        func = op.build(op.example, dtype)
        again = PrimFunc.from_json(func.to_json())
        assert again == func
        assert structural_hash(again) == structural_hash(func)
    sym = op.build({p: Var(p) for p in op.params})
    assert {v.name for v in sym.shape_vars} <= set(op.params)
    assert PrimFunc.from_json(sym.to_json()) == sym
    assert flops(sym, op.example) == flops(op.build(op.example), op.example) > 0
    assert bytes_moved(sym, op.example) == bytes_moved(op.build(op.example), op.example)
    small = {p: 3 if p not in ("d", "k") else 64 for p in op.params}
    inputs = op.make_inputs(small, "float32", np.random.default_rng(0))
    assert len(inputs) == len(op.build(small).inputs)
    for arr, buf in zip(inputs, op.build(small).inputs, strict=True):
        assert arr.shape == tuple(int(s.value) for s in simplify_shape(buf.shape))
        assert np.any(arr != 0)
    assert np.all(np.isfinite(op.reference(*inputs)))


def simplify_shape(shape):
    return tuple(simplify(s) for s in shape)


def test_dense_flops_and_bytes() -> None:
    f = ops.get_op("dense").build({"m": 2, "n": 3, "k": 5})
    assert flops(f, {}) == 2 * 2 * 3 * 5
    assert bytes_moved(f, {}) == 4 * (2 * 5 + 3 * 5 + 2 * 3)


def test_unknown_op_and_bad_shapes_are_clear() -> None:
    with pytest.raises(ValueError, match="known ops: add"):
        ops.get_op("conv")
    with pytest.raises(ValueError, match="missing k"):
        ops.get_op("dense").build({"m": 1, "n": 2})
    with pytest.raises(ValueError, match="multiple of group_size"):
        ops.get_op("q4_dense").build({"m": 1, "n": 2, "k": 40})


def test_q4_reference_matches_manual_dequant() -> None:
    op = ops.get_op("q4_dense")
    x, qw, sc = op.make_inputs({"m": 2, "n": 3, "k": 64}, "float32", np.random.default_rng(1))
    assert qw.dtype == np.uint32 and sc.dtype == np.float16
    w = np.zeros((3, 64))
    for j in range(3):
        for kk in range(64):
            nib = (int(qw[j, kk // 8]) >> (4 * (kk % 8))) & 15
            w[j, kk] = (nib - 8) * float(sc[j, kk // 32])
    np.testing.assert_allclose(op.reference(x, qw, sc), x.astype(np.float64) @ w.T, rtol=1e-5)


def test_structural_hash_is_stable_across_processes() -> None:
    import subprocess
    import sys

    code = (
        "from tunefleet.ir import ops, structural_hash, Var;"
        "print(structural_hash(ops.get_op('q4_dense').build({'m': Var('m'), 'n': 64, 'k': 128})))"
    )
    here = structural_hash(ops.get_op("q4_dense").build({"m": Var("m"), "n": 64, "k": 128}))
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        ).stdout.strip()
        assert out == here


def _evaluate(e, env):
    """An independent evaluator for integer expressions (Python floor semantics)."""
    from tunefleet.ir import BinOp, Const

    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    assert isinstance(e, BinOp)
    a, b = _evaluate(e.a, env), _evaluate(e.b, env)
    return {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "floordiv": lambda: a // b,
        "floormod": lambda: a % b,
        "min": lambda: min(a, b),
        "max": lambda: max(a, b),
        "lt": lambda: a < b,
    }[e.op]()


def _random_expr(rng, depth):
    names = ("a", "b", "c")
    if depth == 0 or rng.random() < 0.25:
        return Var(rng.choice(names)) if rng.random() < 0.7 else const(int(rng.integers(0, 12)))
    op = rng.choice(["add", "sub", "mul", "floordiv", "floormod", "min", "max"])
    x = _random_expr(rng, depth - 1)
    if op == "mul":
        return x * int(rng.integers(1, 9))
    if op in ("floordiv", "floormod"):
        d = int(rng.integers(1, 9)) if rng.random() < 0.7 else Var("c") + 1
        return floordiv(x, d) if op == "floordiv" else floormod(x, d)
    y = _random_expr(rng, depth - 1)
    from tunefleet.ir import max_, min_

    return {"add": x + y, "sub": x - y, "min": min_(x, y), "max": max_(x, y)}[op]


def test_simplifier_preserves_values_on_random_expressions() -> None:
    rng = np.random.default_rng(7)
    a, b, c = Var("a"), Var("b"), Var("c")
    ranges = {a: (0, 9), b: (0, 5), c: (0, 3)}
    for _ in range(400):
        e = _random_expr(rng, 4)
        s = simplify(e, ranges)
        for _ in range(6):
            env = {
                "a": int(rng.integers(0, 10)),
                "b": int(rng.integers(0, 6)),
                "c": int(rng.integers(0, 4)),
            }
            assert _evaluate(s, env) == _evaluate(e, env), (e, s, env)
