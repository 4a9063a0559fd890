"""The C renderer's own exp: accurate to 1 ulp, expf's special values, and vectorized by gcc."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from ir_gcc_harness import check_against_reference, run_kernel

from tunefleet.ir import Schedule, ops
from tunefleet.ir import tensor_expr as te
from tunefleet.ir.codegen import build_source
from tunefleet.ir.expr import exp, sigmoid
from tunefleet.workers.builder import DEFAULT_CFLAGS

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

N = 1 << 18


def _elementwise(fn, name: str) -> Schedule:
    """y[i] = fn(x[i]) over N floats, the loop split by 16 and vectorized."""
    x = te.placeholder((N,), "float32", name="x")
    y = te.compute((N,), lambda i: fn(x[i]), name=name)
    sch = Schedule(te.create_prim_func([x, y], name=name))
    (loop,) = sch.get_loops(sch.get_block(name))
    _, inner = sch.split(loop, [None, 16])
    sch.vectorize(inner)
    return sch


def _inputs() -> np.ndarray:
    """Special values, both ends of the finite range, a dense sweep and random bit patterns."""
    rng = np.random.default_rng(0)
    special = np.array(
        [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 1e30, -1e30],
        dtype=np.float32,
    )
    edges = np.concatenate(
        [
            np.float32(88.7228394) + np.arange(-64, 64, dtype=np.float32) * np.float32(8e-6),
            np.float32(-87.336544) + np.arange(-64, 64, dtype=np.float32) * np.float32(8e-6),
            np.float32(-103.97208) + np.arange(-64, 64, dtype=np.float32) * np.float32(8e-6),
        ]
    ).astype(np.float32)
    bits = rng.integers(0, 1 << 32, size=N // 2, dtype=np.uint64).astype(np.uint32)
    values = np.concatenate(
        [special, edges, np.linspace(-110.0, 95.0, N // 4, dtype=np.float32), bits.view(np.float32)]
    )
    return values[:N] if values.size >= N else np.resize(values, N)


def _ulps(got: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|got - exact| in units of the float32 spacing at the rounded exact value."""
    with np.errstate(over="ignore"):
        spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    return np.abs(got.astype(np.float64) - exact) / spacing


def test_exp_within_one_ulp_of_float64_with_expf_special_values() -> None:
    x = _inputs()
    (got,) = run_kernel(build_source(_elementwise(exp, "vexp")), [x], {})
    with np.errstate(over="ignore", invalid="ignore"):
        exact = np.exp(x.astype(np.float64))
        rounded = exact.astype(np.float32)
    finite = np.isfinite(rounded) & (rounded != 0) & ~np.isnan(x)
    # measured over every float in [-104.5, 89.5]: 0.94 ulp, 7.9e-8 relative for normal results
    assert _ulps(got[finite], exact[finite]).max() <= 1.0
    # overflow to inf, underflow to +0, inf and NaN exactly as expf rounds them
    np.testing.assert_array_equal(got[~finite & ~np.isnan(x)], rounded[~finite & ~np.isnan(x)])
    assert np.isnan(got[np.isnan(x)]).all()
    assert got[x == -np.inf][0] == 0.0 and not np.signbit(got[x == -np.inf][0])
    assert got[x == np.inf][0] == np.inf


def test_sigmoid_uses_the_same_exp() -> None:
    x = np.linspace(-120.0, 120.0, N, dtype=np.float32)
    ks = build_source(_elementwise(sigmoid, "vsig"))
    assert "expf(" not in ks.source.replace("tf_expf(", "")
    (got,) = run_kernel(ks, [x], {})
    want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-37)


def _vector_softmax(m: int, n: int) -> Schedule:
    """softmax with its sum of exps as a simd reduction and its output loop vectorized by 16."""
    sch = Schedule(ops.get_op("softmax").build({"m": m, "n": n}, "float32"))
    total = sch.get_block("softmax_sum")
    sch.decompose_reduction(total, sch.get_loops(total)[-1])
    sch.vectorize(sch.get_loops(total)[-1])
    i, j = sch.get_loops(sch.get_block("softmax"))
    _, inner = sch.split(j, [None, 16])
    sch.vectorize(inner)
    sch.parallel(i)
    return sch


def test_vectorized_softmax_matches_numpy() -> None:
    check_against_reference(_vector_softmax(9, 160), ops.get_op("softmax"), {"m": 9, "n": 160})


def test_softmax_exp_loops_compile_to_vector_code_without_expf(tmp_path) -> None:
    src = tmp_path / "softmax.c"
    src.write_text(build_source(_vector_softmax(8, 256)).source)
    asm = tmp_path / "softmax.s"
    subprocess.run(
        ["gcc", *(f for f in DEFAULT_CFLAGS if f != "-shared"), "-S", "-o", str(asm), str(src)],
        check=True,
        capture_output=True,
    )
    text = asm.read_text()
    assert not re.search(r"\bexpf\b", text), "a call to libm's expf is left"
    # the exponent split n >> 1 of tf_expf, done on packed 32-bit lanes, once per exp loop
    shifts = re.findall(r"\bv?psrad\s+\$1, %[xyz]mm", text)
    assert len(shifts) >= 2, "tf_expf was not vectorized in both exp loops"


def test_loop_invariant_rsqrt_is_computed_once_per_row_and_still_matches_numpy() -> None:
    dims = {"m": 5, "n": 96}
    sch = Schedule(ops.get_op("rmsnorm").build(dims, "float32"))
    _, j = sch.get_loops(sch.get_block("rmsnorm"))
    _, inner = sch.split(j, [None, 16])
    sch.vectorize(inner)
    source = build_source(sch).source
    body = source[source.index("_kernel(") :]
    assert body.count("sqrtf(") == 1
    hoisted = body.index("const float tf_inv0 = (1.0f / sqrtf(")
    assert hoisted < body.index("#pragma omp simd"), "the rsqrt stays inside the vector loop"
    check_against_reference(sch, ops.get_op("rmsnorm"), dims)


def test_calls_that_vary_in_the_loop_or_sit_under_a_guard_stay_in_it() -> None:
    # exp(x[i]) varies with i; under the split's guard (n=100 by 16) nothing may move out
    x = te.placeholder((100,), "float32", name="x")
    y = te.compute((100,), lambda i: exp(x[i]) + exp(x[0]), name="y")
    sch = Schedule(te.create_prim_func([x, y], name="y"))
    (loop,) = sch.get_loops(sch.get_block("y"))
    sch.split(loop, [None, 16])
    source = build_source(sch).source
    assert "tf_inv" not in source
    inputs = [np.linspace(-3.0, 3.0, 100, dtype=np.float32)]
    (got,) = run_kernel(build_source(sch), inputs, {})
    np.testing.assert_allclose(got, np.exp(inputs[0]) + np.exp(inputs[0][0]), rtol=2e-7)
