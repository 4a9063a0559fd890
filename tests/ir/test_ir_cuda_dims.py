"""Kernels that read their symbolic dims from a device array (`dim_slots`), as compiled
models' CUDA kernels do so that one captured graph serves every size: the signature, the
slot each dim is read from, refusals, and an nvcc compile (no GPU needed)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tunefleet.ir import Var, build_source, default_schedule, ops
from tunefleet.ir.errors import CodegenError

NVCC = shutil.which("nvcc")


def _rmsnorm():
    return ops.get_op("rmsnorm").build({"m": Var("m"), "n": 96}, "float16")


def test_dims_come_from_their_slots_of_one_pointer() -> None:
    func = _rmsnorm()
    by_value = build_source(default_schedule(func, "cuda"), "cuda")
    in_memory = build_source(default_schedule(func, "cuda"), "cuda", dim_slots=("b", "n", "m"))
    assert "int64_t m)" in by_value.source and "tf_dims" not in by_value.source
    assert "const int64_t* __restrict__ tf_dims)" in in_memory.source
    assert "const int64_t m = tf_dims[2];" in in_memory.source
    assert in_memory.dim_slots == ("b", "n", "m") and by_value.dim_slots is None
    # the body and the launch are the same: only where the dims come from differs
    assert (in_memory.grid, in_memory.block) == (by_value.grid, by_value.block)
    undone = in_memory.source.replace("  const int64_t m = tf_dims[2];\n", "")
    assert undone.replace("const int64_t* __restrict__ tf_dims", "int64_t m") == by_value.source


def test_a_dim_without_a_slot_or_a_cpu_target_is_refused() -> None:
    sch = default_schedule(_rmsnorm(), "cuda")
    with pytest.raises(CodegenError, match=r"dims \['m'\] have no slot"):
        build_source(sch, "cuda", dim_slots=("b", "n"))
    with pytest.raises(CodegenError, match="need the cuda target"):
        build_source(default_schedule(_rmsnorm(), "cpu"), "cpu", dim_slots=("m",))


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_a_kernel_reading_dims_from_memory_compiles(tmp_path) -> None:
    ks = build_source(default_schedule(_rmsnorm(), "cuda"), "cuda", dim_slots=("m",))
    src = tmp_path / "k.cu"
    src.write_text(ks.source)
    cmd = [NVCC, "-arch=sm_80", "-cubin", "-o", str(tmp_path / "k.cubin"), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
