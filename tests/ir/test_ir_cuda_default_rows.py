"""The default GPU schedule of row-shaped fused tasks (attention: scores, softmax and context
in one kernel) keeps every intermediate on chip, in float32 and float16, for decode and
prefill, and the kernels compile with nvcc (no GPU needed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import build_source, default_schedule

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

NVCC = shutil.which("nvcc")


def _attention(dtype: str, phase: Phase):
    cfg = replace(tiny("llama"), dtype=dtype)
    (task,) = [t for t in model_tasks(cfg, phase) if t.name.startswith("attn_scores")]
    return task


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("phase", [Phase.DECODE, Phase.PREFILL])
def test_attention_default_keeps_scores_on_chip_and_threads_over_keys(dtype, phase, tmp_path):
    task = _attention(dtype, phase)
    ks = build_source(default_schedule(task.func, target="cuda"), target="cuda")
    # one thread block per query row, its threads over the head dim (16 in the tiny config)
    assert ks.block == (32, 1, 1)
    assert "m" in str(ks.shared_bytes)  # the scores row lives in dynamic shared memory
    # the scores are spread over the key positions, not computed one key at a time with a
    # cross-thread reduction over the head dim
    body = ks.source[ks.source.index("extern") :]
    assert "tf_block_add(scores" not in body and "tf_warp_add(scores" not in body
    # each thread's sum over the key positions (the context) runs 16 unrolled steps at a time,
    # so 16 loads of the value cache are in flight instead of one
    assert "< ((m + 15) / 16)" in body and "#pragma unroll 16" in body
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    src = tmp_path / "k.cu"
    src.write_text(ks.source)
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-O3", "-o", str(tmp_path / "k.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
