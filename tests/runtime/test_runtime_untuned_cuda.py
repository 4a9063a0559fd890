"""A CUDA model compiled with no records: buckets where the GEMM family's task has a fixed
tensor-core tiling at the point (prefill from 16 tokens) run it as an exact kernel; the
others keep the symbolic default (nvcc needed, no GPU)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from runtime_models import BUCKETS, tiny

from tunefleet.runtime import CompileOptions, compile_model
from tunefleet.workers.targets import Target


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_untuned_prefill_dense_buckets_run_a_fixed_tensor_core_tiling(tmp_path, build_config):
    cfg = replace(tiny("llama"), dtype="float16")
    manifest = compile_model(CompileOptions(cfg, Target.cuda("sm_90"), str(tmp_path),
                                            build_config, buckets=BUCKETS))  # fmt: skip
    task = manifest.task_for("prefill", "o_proj+attn_residual")
    by_n = {k.bucket["n"]: k for k in task.kernels}
    assert by_n[32].exact and by_n[32].record_id is None and by_n[32].pad == ("n",)
    assert "mma_sync(" in Path(tmp_path, by_n[32].source).read_text()  # 32 rows: WMMA tiles
    assert not by_n[8].exact and by_n[8].source == task.fallback.source  # 8 rows: the GEMV
    decode = manifest.task_for("decode", "o_proj+attn_residual")
    assert not any(k.exact for k in decode.kernels)  # b = 1, 4: GEMV rows, no tiling
