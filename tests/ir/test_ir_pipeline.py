"""Software pipelining (cp.async stages), hoisted loads, min-blocks launch bounds and shared
memory reuse: lowering, replay, numpy results on the CPU and nvcc compiles for sm_80 / sm_90."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from ir_gcc_harness import run_kernel

from tunefleet.ir import LoweringError, Schedule, ScheduleError, Trace, build_source, ops
from tunefleet.ir.lower import lower
from tunefleet.ir.printer import stmt_lines

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from dense_tensorcore_cuda import dense_tc_schedule
from gemv_cuda import gemv_schedule

NVCC = shutil.which("nvcc")


def _tiled_dense(m: int, n: int, k: int, tile_k: int, stages: int) -> Schedule:
    """A CPU dense whose k loop copies x and w tiles into 'shared' buffers, then pipelined."""
    sch = Schedule(ops.get_op("dense").build({"m": m, "n": n, "k": k}, "float32"))
    acc = sch.get_block("dense")  # float32: the reduction block is the output
    i, j, kk = sch.get_loops(acc)
    ko, ki = sch.split(kk, [None, tile_k])
    sch.reorder(ko, i, j, ki)
    for operand in (0, 1):
        tile = sch.cache_read(acc, operand, "shared")
        sch.compute_at(tile, ko)
    sch.annotate(ko, "software_pipeline_stages", stages)
    return sch


@pytest.mark.parametrize("stages", [2, 3, 4, 7])
def test_pipelined_loop_computes_the_same_dense(stages) -> None:
    m, n, k = 6, 10, 40  # 5 k steps of 8: fewer steps than stages for 7
    sch = _tiled_dense(m, n, k, 8, stages)
    rng = np.random.default_rng(stages)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    (y,) = run_kernel(build_source(sch), [x, w], {})
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4)


def test_pipelined_loop_is_multi_buffered_with_prologue() -> None:
    sch = _tiled_dense(6, 10, 40, 8, 3)
    text = "\n".join(stmt_lines(lower(sch.mod).body))
    assert "Buffer((3, 6, 8)" in text and "Buffer((3, 10, 8)" in text  # one tile per stage
    assert text.count("pipeline_commit()") == 3  # two in the prologue, one per iteration
    assert "pipeline_wait(pending=1)" in text and "k_0 + 2 < 5" in text.replace("(", "")


@pytest.mark.parametrize(("k", "stages"), [(40, 7), (40, 6), (16, 4), (8, 3)])
def test_every_wait_covers_the_stage_it_reads(k, stages) -> None:
    """The first wait must leave pending only groups committed after the one it reads."""
    sch = _tiled_dense(6, 10, k, 8, stages)
    text = "\n".join(stmt_lines(lower(sch.mod).body))
    committed_ahead = text.split("for k_0")[0].count("pipeline_commit()")
    pending = int(text.split("pipeline_wait(pending=")[1].split(")")[0])
    assert committed_ahead >= 1
    assert pending <= committed_ahead - 1, (committed_ahead, pending)
    effective = min(stages, k // 8 + 1)
    assert f"Buffer(({effective}, 6, 8)" in text  # no stage buffers beyond the loop's length


def test_pipeline_annotation_replays_from_json() -> None:
    sch = dense_tc_schedule(256, 256, 192, stages=3)
    assert "software_pipeline_stages" in sch.trace.as_python()
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert replayed.func == sch.func
    assert build_source(replayed, "cuda").source == build_source(sch, "cuda").source


def test_pipeline_needs_copies_then_compute() -> None:
    sch = Schedule(ops.get_op("dense").build({"m": 4, "n": 4, "k": 16}, "float32"))
    acc = sch.get_block("dense")
    ko, _ = sch.split(sch.get_loops(acc)[-1], [None, 4])
    sch.annotate(ko, "software_pipeline_stages", 2)
    with pytest.raises(LoweringError, match="cache_read the operands into 'shared'"):
        lower(sch.mod)
    with pytest.raises(ScheduleError, match="software_pipeline_stages' must be an int >= 2"):
        _tiled_dense(4, 4, 16, 4, 1)


def _nvcc(source: str, arch: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="tf-nvcc-") as tmp:
        src = Path(tmp) / "k.cu"
        src.write_text(source)
        out = Path(tmp) / "k.cubin"
        cmd = [NVCC or "nvcc", "-cubin", f"-arch={arch}", "-O3", "-o", str(out), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
        return r.returncode, r.stderr[-2000:]


def test_pipelined_tensor_core_dense_source() -> None:
    ks = build_source(dense_tc_schedule(256, 256, 192, stages=3, warps=(2, 4)), "cuda")
    src = ks.source
    assert src.count("cp.async.cg.shared.global") == 6  # x and w: 2 prologue stages, steady
    assert src.count("cp.async.commit_group") == 3
    assert '"n"(1)' in src and "cp.async.wait_group" in src
    # three stages of two padded 128 x 64 fp16 tiles; the float32 y tile reuses their bytes
    assert ks.shared_bytes == 3 * 2 * 128 * 72 * 2


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_pipelined_dense_and_hoisted_gemv_compile(arch) -> None:
    dense = build_source(dense_tc_schedule(256, 256, 128, tile_k=32, stages=4), "cuda")
    gemv = build_source(gemv_schedule(1, 512, 1024, hoist=True, min_blocks=8), "cuda")
    for ks in (dense, gemv):
        rc, log = _nvcc(ks.source, arch)
        assert rc == 0, log


def test_hoisted_gemv_issues_loads_first() -> None:
    plain = build_source(
        gemv_schedule(1, 512, 1024, rows_per_block=4, hoist=False, min_blocks=None), "cuda"
    ).source
    ks = build_source(gemv_schedule(1, 512, 1024, rows_per_block=4, min_blocks=8), "cuda")
    assert "uint4 tf_h" not in plain and "__launch_bounds__(128)" in plain
    assert ks.source.count("uint4 tf_h") == 2  # x and w: 4 wide loads each, before the FMAs
    assert "__launch_bounds__(128, 8)" in ks.source
    sch = gemv_schedule(1, 512, 1024, rows_per_block=4, hoist=True, min_blocks=8)
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert build_source(replayed, "cuda").source == ks.source


def _fragment_dense(m: int, n: int, k: int, tile_k: int, step: int, stages: int) -> Schedule:
    """As `_tiled_dense`, with the unrolled inner k loop copying `step`-wide slices of the
    shared tiles into 'local' fragments, pipelined one step ahead."""
    sch = Schedule(ops.get_op("dense").build({"m": m, "n": n, "k": k}, "float32"))
    acc = sch.get_block("dense")
    i, j, kk = sch.get_loops(acc)
    ko, ki, kx = sch.split(kk, [None, tile_k // step, step])
    sch.reorder(ko, ki, i, j, kx)
    for operand in (0, 1):
        frag = sch.cache_read(acc, operand, "local")
        sch.compute_at(frag, ki)
        tile = sch.cache_read(frag, 0, "shared")
        sch.compute_at(tile, ko)
    sch.unroll(ki)
    sch.annotate(ko, "software_pipeline_stages", stages)
    sch.annotate(ko, "software_pipeline_fragments", 1)
    return sch


@pytest.mark.parametrize(
    ("m", "n", "k", "tile_k", "step", "stages"),
    [(6, 10, 40, 8, 4, 3), (6, 10, 48, 8, 2, 2), (5, 7, 64, 16, 4, 4), (6, 10, 16, 8, 4, 3),
     (6, 10, 8, 8, 4, 3)],
)  # fmt: skip
def test_fragment_prefetch_computes_the_same_dense(m, n, k, tile_k, step, stages) -> None:
    sch = _fragment_dense(m, n, k, tile_k, step, stages)
    rng = np.random.default_rng(k + stages)
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    (y,) = run_kernel(build_source(sch), [x, w], {})
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-4, atol=1e-4)


def test_fragment_prefetch_loads_one_step_ahead() -> None:
    """Before: each inner step loads its fragments, then computes. After: two fragment copies,
    S stages in the prologue, the next step's loads ahead of this step's compute, and the wait
    (barrier) plus the next copies before the last step."""
    before = "\n".join(stmt_lines(lower(_tiled_dense(6, 10, 40, 8, 3).mod).body))
    assert "x_local" not in before
    text = "\n".join(stmt_lines(lower(_fragment_dense(6, 10, 40, 8, 4, 3).mod).body))
    assert "Buffer((12, 4)" in text and "Buffer((20, 4)" in text  # 2 x (6 | 10 rows) x step
    prologue, loop = text.split("for k_0")
    assert prologue.count("pipeline_commit()") == 3 and "pipeline_wait(pending=2)" in prologue
    assert "x_local[ax0_1, ax1_1] = x_shared[0, ax0_1, ax1_1]" in prologue
    first, last = loop.split("pipeline_wait(pending=1)")
    assert "x_local[ax0_1 + 6, ax1_1] = x_shared[k_0 % 3, ax0_1, ax1_1 + 4]" in first
    assert "x_local[i, k_2]" in first  # step 0 computes on copy 0 while copy 1 loads
    assert "if k_0 + 3 < 5" in last and "x_shared[k_0 % 3, " in last  # stage k's buffer
    assert "x_shared[(k_0 + 1) % 3, ax0_1, ax1_1]" in last and "x_local[i + 6, k_2]" in last


def test_fragment_prefetch_replays_and_checks_its_loop() -> None:
    sch = _fragment_dense(6, 10, 40, 8, 4, 3)
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert build_source(replayed).source == build_source(sch).source
    odd = _fragment_dense(6, 10, 48, 12, 4, 3)  # 3 inner steps: the copies would alternate
    with pytest.raises(LoweringError, match="even number of steps"):
        lower(odd.mod)
    flat = _tiled_dense(6, 10, 40, 8, 3)
    flat.annotate(flat.get_loops(flat.get_block("dense"))[0], "software_pipeline_fragments", 1)
    with pytest.raises(LoweringError, match="unrolled loop"):
        lower(flat.mod)
