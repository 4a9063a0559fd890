"""The default GPU schedule of row-shaped fused tasks (attention: scores, softmax and context
in one kernel) keeps every intermediate on chip, in float32 and float16, for decode and
prefill, spreads the keys over warps, and the kernels compile with nvcc (no GPU needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import build_source, default_schedule
from tunefleet.ir.default_schedule_cuda import (
    KEY_LANES,
    KEYED_CLUSTER,
    KEYED_WARPS,
    KEYS_IN_FLIGHT,
    default_cuda_schedule,
)

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

NVCC = shutil.which("nvcc")


def _attention(dtype: str, phase: Phase):
    cfg = replace(tiny("llama"), dtype=dtype)
    (task,) = [t for t in model_tasks(cfg, phase) if t.name.startswith("attn_scores")]
    return task


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("phase", [Phase.DECODE])  # a prompt's: tests/ir/test_ir_key_tiles.py
def test_attention_default_spreads_keys_over_warps_and_head_dim_over_lanes(dtype, phase, tmp_path):
    task = _attention(dtype, phase)
    ks = build_source(default_schedule(task.func, target="cuda"), target="cuda")
    # one thread block per query row of KEYED_WARPS warps: KEY_LANES lanes (threadIdx.x) per
    # key, two keys to a warp (threadIdx.y: the block's rows of lanes)
    assert ks.block == (KEY_LANES, KEYED_WARPS * 32 // KEY_LANES, 1)
    assert "m" in str(ks.shared_bytes)  # the scores row lives in dynamic shared memory
    body = ks.source[ks.source.index("extern") :]
    # a key's score is a reduction over its row of lanes (they read the key's row together),
    # several keys in flight per row
    assert f"scores_red[0] = tf_block_add(scores_red[0], {KEY_LANES}, nullptr)" in body
    assert f"#pragma unroll {KEYS_IN_FLIGHT}" in body
    # the row's max is each row of lanes' share of the keys (a reduction over its lanes),
    # then the rows' shares combined by one row of lanes
    assert f"row_max_rf_red[0] = tf_block_max(row_max_rf_red[0], {KEY_LANES}, nullptr)" in body
    assert f"row_max_red[0] = tf_block_max(row_max_red[0], {KEY_LANES}, nullptr)" in body
    # the context is split over the rows of lanes: each thread keeps its partial sums over its
    # keys in registers, zeroed once before the keys, 16 keys unrolled, and the rows' partials
    # meet in shared memory
    (partials,) = re.findall(r"float (\w+_rf_\d+_local)\[\d+\]", body)
    at = body.index(f"float {partials}[")
    before_keys = body[at : body.index("for (int64_t v_k", at)]
    assert re.search(rf"{partials}\[\w+\] = 0\.0f;", before_keys), before_keys
    assert body.count(f"{partials}[") - before_keys.count(f"{partials}[") == 3  # +=, store
    assert "#pragma unroll 16" in body
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    src = tmp_path / "k.cu"
    src.write_text(ks.source)
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-O3", "-o", str(tmp_path / "k.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("phase", [Phase.DECODE, Phase.PREFILL])
def test_decode_attention_rows_split_over_a_cluster_from_sm_90(phase, tmp_path):
    """One query token per (batch, head) leaves too few rows to fill the GPU: from sm_90 each
    decode row is split over a cluster of blocks; prefill rows, and older GPUs, are not."""
    task = _attention("float16", phase)
    for arch, clustered in (("sm_90", phase is Phase.DECODE), ("sm_80", False), ("", False)):
        ks = build_source(default_schedule(task.func, target="cuda", arch=arch), target="cuda")
        assert (f"__cluster_dims__({KEYED_CLUSTER}, 1, 1)" in ks.source) is clustered, arch
        assert ("tf_dsmem(" in ks.source) is clustered, arch
    if phase is Phase.PREFILL:
        return
    ks = build_source(default_schedule(task.func, "cuda", "sm_90"), "cuda")
    body = ks.source[ks.source.index("extern") :]
    # the cluster's shares of the max and the sum are read by one lane each and combined by a
    # warp reduction; the context's shares are summed in a register before one store
    assert f"row_max_red[0] = tf_block_max(row_max_red[0], {KEYED_CLUSTER}, nullptr)" in body
    assert f"row_sum_red[0] = tf_block_add(row_sum_red[0], {KEYED_CLUSTER}, nullptr)" in body
    # one cluster barrier after each kind of share (max, sum, context) and one at the end
    assert body.count("tf_cluster_sync();") == 4, body
    # grouped, a cluster takes the query heads of one kv head (2 here): a block per cluster
    # rank and kv head, and each key and value is read once, into registers, for all of them
    grouped = build_source(default_cuda_schedule(task.func, "sm_90", group=2), "cuda")
    assert grouped.grid[0] == f"((b * 2) * {KEYED_CLUSTER})", grouped.grid
    for cache in ("k_cache", "v_cache"):
        (load,) = [line for line in grouped.source.splitlines() if f"{cache}[" in line]
        assert load.strip().startswith(f"{cache}_local["), load
    # a lane's slice of the query (one element of this head dim of 16) goes into registers
    # for every row of the group, unguarded (the batch index clamped), so nvcc keeps the
    # load out of the key loop
    ungrouped = build_source(default_cuda_schedule(task.func, "sm_90"), "cuda")
    for source, rows in ((ungrouped.source, 1), (grouped.source, 2)):
        (load,) = [line for line in source.splitlines() if "(q + " in line or "q[" in line]
        assert load.strip().startswith("q_local[") and "(b - 1)" in load, load
        assert f"q_local[{rows}]" in source
    # each block holds the scores and probabilities of its share of the keys only, so a long
    # context still leaves several blocks per multiprocessor
    ks = build_source(default_schedule(task.func, "cuda", "sm_90"), "cuda")
    share = f"(m + {KEYED_CLUSTER - 1}) // {KEYED_CLUSTER}"
    assert share in str(ks.shared_bytes) and "(m * 2)" not in str(ks.shared_bytes)
    if NVCC is None:
        return
    src = tmp_path / "k.cu"
    src.write_text(build_source(default_schedule(task.func, "cuda", "sm_90"), "cuda").source)
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-O3", "-o", str(tmp_path / "k.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
