"""A session refuses, in one line, sizes at which one of its CUDA kernels would need more
shared memory than a block may use (a decode step's attention row grows with the kv length); the
check reads the compiled model's launch expressions (nvcc needed, no GPU)."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
from runtime_models import BUCKETS, tiny

from tunefleet.runtime import CompileOptions, compile_model
from tunefleet.runtime.shared_memory import shared_memory_overflow
from tunefleet.workers.launch import evaluate
from tunefleet.workers.targets import Target

SM90_OPTIN = 227 * 1024  # what a block of an H100 or H200 may opt in to


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, build_config):
    if shutil.which("nvcc") is None:
        pytest.skip("needs nvcc")
    cfg = replace(tiny("llama"), dtype="float16")
    out = tmp_path_factory.mktemp("sm90-model")
    return compile_model(CompileOptions(cfg, Target.cuda("sm_90"), str(out), build_config,
                                        buckets=BUCKETS))  # fmt: skip


def _tops(batch: int, max_len: int, max_prompt: int) -> dict:
    return {"decode": {"b": batch, "n": 1, "m": max_len},
            "prefill": {"b": 1, "n": max_prompt, "m": max_prompt}}  # fmt: skip


def test_sizes_that_fit_pass_and_a_long_context_is_refused(manifest) -> None:
    assert shared_memory_overflow(manifest, SM90_OPTIN, _tops(4, 4096, 4096)) is None
    # a prompt's attention walks the keys in tiles: its shared memory does not grow with them
    prefill = manifest.task_for("prefill", "attn_scores+attn_softmax+attn_context")
    long = evaluate(prefill.fallback.launch.shared_bytes, {"b": 1, "n": 40_000, "m": 40_000})
    assert long == evaluate(prefill.fallback.launch.shared_bytes, {"b": 1, "n": 9, "m": 9})
    assert shared_memory_overflow(manifest, SM90_OPTIN, _tops(1, 4096, 40_000)) is None
    # a decode step keeps a row of scores: a session is checked at its max_len
    decode = manifest.task_for("decode", "attn_scores+attn_softmax+attn_context")
    need = evaluate(decode.fallback.launch.shared_bytes, {"b": 1, "n": 1, "m": 20_000})
    short = evaluate(decode.fallback.launch.shared_bytes, {"b": 1, "n": 1, "m": 512})
    assert short < need < SM90_OPTIN
    assert shared_memory_overflow(manifest, SM90_OPTIN, _tops(1, 20_000, 512)) is None
    msg = shared_memory_overflow(manifest, need - 1, _tops(1, 20_000, 512))
    assert msg is not None and "\n" not in msg
    assert msg.startswith("decode/attn_scores") and "m=20000" in msg and "max_len" in msg
