"""The CLI commands, fused PrimFuncs composed from op compute functions, and the example."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from ir_gcc_harness import run_kernel

from tunefleet.coordinator.cli import main
from tunefleet.ir import PrimFunc, Var, create_prim_func, flops, ops, placeholder, structural_hash
from tunefleet.ir.codegen import build_source
from tunefleet.ir.default_schedule import default_schedule

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def test_ops_lists_every_op_as_text_and_json(capsys) -> None:
    assert main(["ops"]) == 0
    text = capsys.readouterr().out
    assert all(op.name in text for op in ops.list_ops())
    assert main(["ops", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    dense = next(r for r in rows if r["name"] == "dense")
    assert dense["params"] == ["m", "n", "k"] and dense["attrs"] == {"bias": False}


def test_show_prints_ir_and_source(capsys) -> None:
    assert (
        main(
            [
                "show",
                "dense",
                "--shape",
                "m=?,n=64,k=32",
                "--dtype",
                "float16",
                "--attr",
                "bias=true",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert 'block("dense_acc")' in out and "# symbolic dims: m" in out
    assert main(["show", "rmsnorm", "--shape", "m=7,n=77", "--source"]) == 0
    src = capsys.readouterr().out
    assert "void rmsnorm_kernel(" in src and "#pragma omp parallel for" in src


def test_show_cuda_source_has_kernel_and_launch(capsys) -> None:
    assert main(["show", "rmsnorm", "--shape", "m=?,n=4096", "--target", "cuda", "--source"]) == 0
    src = capsys.readouterr().out
    assert 'extern "C" __global__' in src and "tf_block_add" in src
    assert "// launch: grid=(m, 1, 1) block=(256, 1, 1) dynamic_shared_bytes=0" in src


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["show", "conv"], 2, "known ops"),
        (["show", "dense", "--shape", "m=0"], 2, "positive int"),
        (["show", "dense", "--shape", "q=3"], 2, "unknown dim"),
        (["show", "dense", "--dtype", "int8"], 2, "dtype must be"),
        (["show", "q4_dense", "--shape", "k=40"], 2, "multiple of group_size"),
    ],
)
def test_show_errors_are_one_clear_line(capsys, argv, code, needle) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert needle in err and "Traceback" not in err and len(err.splitlines()) == 1


def _o_proj_residual(n):
    x = placeholder((n, 64), "float32", "x")
    w = placeholder((48, 64), "float32", "w")
    r = placeholder((n, 48), "float32", "residual")
    y = ops.add_compute(ops.dense_compute(x, w), r)
    return create_prim_func([x, w, r, y], name="o_proj_residual")


@needs_gcc
def test_fused_prim_func_lowers_hashes_and_runs() -> None:
    fused = _o_proj_residual(Var("n"))
    assert PrimFunc.from_json(fused.to_json()) == fused
    assert structural_hash(fused) == structural_hash(_o_proj_residual(Var("tokens")))
    assert structural_hash(fused) != structural_hash(_o_proj_residual(7))
    assert flops(fused, {"n": 7}) == 2 * 7 * 48 * 64 + 7 * 48
    sch = default_schedule(fused)
    fused_loop, _ = sch.get_loops(sch.get_block("dense"))
    sch.reverse_compute_at(sch.get_block("add"), fused_loop)
    assert len(sch.get_loops(sch.get_block("add"))) == 1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 64)).astype(np.float32)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    r = rng.standard_normal((7, 48)).astype(np.float32)
    for target in (fused, sch):
        (out,) = run_kernel(build_source(target), [x, w, r], {"n": 7})
        np.testing.assert_allclose(out, x @ w.T + r, rtol=1e-4, atol=1e-4)


@needs_gcc
def test_matmul_example_schedule_is_correct() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "matmul_cpu.py"
    spec = importlib.util.spec_from_file_location("matmul_cpu_example", path)
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    sch = mod.schedule(mod.define(64))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 64)).astype(np.float32)
    b = rng.standard_normal((64, 64)).astype(np.float32)
    (c,) = run_kernel(build_source(sch), [a, b], {})
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    assert sch.trace.apply(mod.define(64)).func == sch.func
