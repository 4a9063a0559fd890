"""The Hopper wgmma dense from the IR: swizzled layout, intrinsics, codegen, replay, nvcc sm_90a."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tunefleet.ir import Schedule, Trace, build_source, ops
from tunefleet.ir.errors import CodegenError, ScheduleError
from tunefleet.ir.intrinsics import get_intrin
from tunefleet.ir.intrinsics_wgmma import nvcc_arch
from tunefleet.ir.wgmma_schedule import apply_wgmma_tiling

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from dense_wgmma_cuda import dense_wgmma_schedule

NVCC = shutil.which("nvcc")


def _compile(source: str, arch: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="tf-nvcc-") as tmp:
        src = Path(tmp) / "k.cu"
        src.write_text(source)
        out = Path(tmp) / "k.cubin"
        cmd = [NVCC, "-cubin", f"-arch={arch}", "-O3", "-o", str(out), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        return r.returncode, r.stderr[-2000:]


def test_swizzle_formula_is_the_128_byte_swizzle() -> None:
    """Chunk c of row r of a 128-byte-row tile goes to chunk c ^ (r % 8) (what wgmma's 128B
    mode reads), 16-byte runs stay whole, and the map is a permutation of each atom."""
    from tunefleet.ir.render_wgmma import SWIZZLE_HELPER

    assert "e ^ (((e >> 6) & 7) << 3)" in SWIZZLE_HELPER

    def swz(e: int) -> int:
        return e ^ (((e >> 6) & 7) << 3)

    for r in range(16):
        for c in range(8):
            base = swz(r * 64 + c * 8)
            assert base == r * 64 + (c ^ (r % 8)) * 8
            assert [swz(r * 64 + c * 8 + v) for v in range(8)] == list(range(base, base + 8))
    assert sorted(swz(e) for e in range(2048)) == list(range(2048))


def test_schedule_records_layout_and_renders_wgmma() -> None:
    sch = dense_wgmma_schedule(256, 512, 320, "float16", 2, 256, 3)
    py = sch.trace.as_python()
    assert "storage_swizzle" in py and "wgmma_m64n256k16_f16_f32" in py and "wgmma_batch" in py
    ks = build_source(sch, target="cuda")
    src = ks.source
    assert ks.block == (128, 2, 1) and ks.grid == (2, 2, 1)
    # the four k16 steps of a 64-wide k tile are one unrolled loop of one wgmma, fenced,
    # committed and waited as a group; copies land swizzled, then the async-proxy fence
    assert src.count("wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16") == 1
    assert src.count("wgmma.fence.sync.aligned") == 1
    assert src.count("wgmma.commit_group.sync.aligned") == 1
    assert "float dense_acc_wgmma_accumulator[128];" in src
    assert "cp.async.cg.shared.global" in src and "tf_swz128(" in src
    assert "fence.proxy.async.shared::cta" in src
    assert "__align__(1024)" in src
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert replayed.func == sch.func
    assert build_source(replayed, target="cuda").source == src


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize(
    ("dtype", "warpgroups", "tile_n", "stages"),
    [("float16", 2, 128, 3), ("bfloat16", 1, 64, 2)],
)
def test_wgmma_dense_compiles_for_sm90a(dtype, warpgroups, tile_n, stages) -> None:
    sch = dense_wgmma_schedule(128, 256, 192, dtype, warpgroups, tile_n, stages)
    src = build_source(sch, target="cuda").source
    ty = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    assert f"m64n{tile_n}k16.f32.{ty}.{ty}" in src
    assert nvcc_arch("sm_90", src) == "sm_90a"
    rc, log = _compile(src, "sm_90a")
    assert rc == 0, log


def test_nvcc_arch_only_changes_wgmma_sources_on_sm90() -> None:
    assert nvcc_arch("sm_90", "mma.sync") == "sm_90"
    assert nvcc_arch("sm_80", "wgmma.fence") == "sm_80"
    assert nvcc_arch("sm_90", "asm(wgmma.fence)") == "sm_90a"


def test_wgmma_intrinsics_are_registered() -> None:
    mma = get_intrin("wgmma_m64n128k16_bf16_f32")
    assert mma.extents == (64, 128, 16) and mma.in_dtype == "bfloat16"
    assert mma.acc_scope == "wgmma.accumulator" and mma.operand_scopes == ("shared", "shared")
    assert get_intrin("wgmma_fill_n256").extents == (64, 256)


def test_bad_tiling_is_one_clear_error() -> None:
    sch = Schedule(ops.get_op("dense").build({"m": 128, "n": 128, "k": 64}, "float16"))
    with pytest.raises(ScheduleError, match="n in"):
        apply_wgmma_tiling(sch, "dense", "dense_acc", "float16", warpgroups=2, n=96, stages=3)


def test_wgmma_on_an_unswizzled_tile_is_refused() -> None:
    """Without storage_swizzle the descriptors would read the wrong elements: codegen says so."""
    sch = dense_wgmma_schedule(128, 128, 64, "float16", 1, 128, 2)
    trace = Trace.from_json(sch.trace.to_json())
    plain = Trace(
        tuple(
            i for i in trace.insts if not (i.kind == "annotate" and "storage_swizzle" in i.inputs)
        ),
        trace.decisions,
    )
    with pytest.raises(CodegenError, match="storage_swizzle = 128"):
        build_source(plain.apply(sch.original), target="cuda")


def test_unknown_swizzle_width_is_refused() -> None:
    sch = Schedule(ops.get_op("dense").build({"m": 64, "n": 64, "k": 64}, "float16"))
    acc = sch.get_block("dense_acc")
    tile = sch.cache_read(acc, 0, "shared")
    with pytest.raises(ScheduleError, match="storage_swizzle' must be one of"):
        sch.annotate(tile, "storage_swizzle", 64)
