"""Thread-block clusters: a row reduction split over the blocks of a cluster (clusterIdx.x),
each block's share in `shared.cluster` memory that the others read, cluster barriers between
the shares and their sum; codegen checks with nvcc (no GPU needed) and runs against numpy on
a GPU."""

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
from tunefleet.ir import Var, build_source, ops
from tunefleet.ir.default_schedule_cuda import default_cuda_schedule
from tunefleet.ir.errors import CodegenError
from tunefleet.ir.schedule import Schedule

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

NVCC = shutil.which("nvcc")
RMSNORM = ops.get_op("rmsnorm")


def _rmsnorm_over_cluster(cluster: int, n: int = 4096, dtype: str = "float16") -> Schedule:
    """rmsnorm with each row's sum of squares and its output split over `cluster` blocks."""
    sch = Schedule(RMSNORM.build({"m": Var("m"), "n": n}, dtype))
    out = sch.get_block("rmsnorm")
    i, j = sch.get_loops(out)
    sch.bind(i, "blockIdx.x")
    s, jr = sch.split(j, [cluster, None])
    sch.bind(s, "clusterIdx.x")
    jo, jx = sch.split(jr, [None, 128])
    sch.reorder(jx, jo)
    sch.bind(jx, "threadIdx.x")
    ss = sch.get_block("rmsnorm_sumsq")
    _, k = sch.get_loops(ss)
    ks, _ = sch.split(k, [cluster, None])
    share = sch.rfactor(ks, 0)  # [cluster, m]: one slot per block of the cluster
    sch.compute_at(ss, i)
    sch.set_scope(ss, 0, "shared")
    sch.compute_at(share, i)
    sch.set_scope(share, 0, "shared.cluster")
    rank, kr = sch.get_loops(share)[-2:]
    sch.bind(rank, "clusterIdx.x")
    ko, kx = sch.split(kr, [None, 128])
    sch.reorder(kx, ko)
    sch.bind(kx, "threadIdx.x")
    return sch


def test_a_row_split_over_a_cluster_syncs_the_cluster_between_shares_and_sum() -> None:
    ks = build_source(_rmsnorm_over_cluster(4), target="cuda")
    assert ks.grid == ("(m * 4)", 1, 1) and ks.block == (128, 1, 1)
    src = ks.source
    assert "__cluster_dims__(4, 1, 1)" in src
    body = src[src.index("extern") :]
    # blockIdx.x holds the row and the block's rank in its cluster
    assert "tf_bx = (int64_t)blockIdx.x / 4" in body
    assert "tf_crank = (int64_t)blockIdx.x % 4" in body
    share_write = body.index("tf_dsmem(rmsnorm_sumsq_rf")
    barrier = body.index("tf_cluster_sync();", share_write)
    # the sum reads every block's share, after the cluster's barrier
    total = body.index("tf_dsmem(rmsnorm_sumsq_rf", barrier)
    assert share_write < barrier < total
    # and no block leaves while another may still read its shared memory
    assert body.rstrip().endswith("tf_cluster_sync();\n}")


def test_cluster_buffers_share_no_bytes_with_other_shared_arrays() -> None:
    """Dynamic shared memory reuses the bytes of arrays no longer live, but a block's share
    may still be read by the cluster's other blocks after it moved on."""
    cfg = replace(tiny("llama"), dtype="float16")
    (task,) = [t for t in model_tasks(cfg, Phase.DECODE) if t.name.startswith("attn_scores")]
    ks = build_source(default_cuda_schedule(task.func, cluster=4), target="cuda")
    offsets = dict(re.findall(r"(\w+) = \(\w+\*\)\(tf_dyn_smem \+ (\d+)\);", ks.source))
    shares = set(re.findall(r"tf_dsmem\((\w+) \+", ks.source))
    assert len(shares) == 3 and shares <= set(offsets), ks.source  # max, sum, context
    for name in shares:
        others = [o for n, o in offsets.items() if n != name]
        assert offsets[name] not in others, (name, offsets)


def test_cluster_sizes_beyond_the_portable_eight_are_refused() -> None:
    with pytest.raises(CodegenError, match="at most 8"):
        build_source(_rmsnorm_over_cluster(16), target="cuda")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("cluster", [2, 8])
def test_cluster_kernels_compile_for_sm_90(cluster, tmp_path) -> None:
    ks = build_source(_rmsnorm_over_cluster(cluster), target="cuda")
    src = tmp_path / "k.cu"
    src.write_text(ks.source)
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-O3", "-o", str(tmp_path / "k.cubin"), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("cluster", [2, 8])
@pytest.mark.parametrize("n", [4096, 1000])
def test_a_row_split_over_a_cluster_matches_numpy(cluster, n, tmp_path) -> None:
    from tunefleet.workers.builder import BuildConfig, BuildInput, build
    from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status
    from tunefleet.workers.runner import Runner, RunnerConfig
    from tunefleet.workers.targets import resolve_target

    fast = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2)
    ks = build_source(_rmsnorm_over_cluster(cluster, n), target="cuda")
    cache = str(tmp_path)
    built = build(BuildInput(resolve_target("cuda"), kernel=ks), BuildConfig(cache_dir=cache))
    assert built.status is Status.OK, built.message
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        problem = Problem.create("rmsnorm", {"m": 7, "n": n}, "float16")
        result = runner.run(RunInput(built.artifact, problem, fast))
    assert result.status is Status.OK, result.message
