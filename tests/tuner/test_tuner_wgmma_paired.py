"""wgmma tiling of the dense tasks whose epilogue pairs columns (rope on q|k|v, silu_mul on
gate|up): the sketches the rule makes on sm_90, the code they render (both halves of a pair in
one tile), replay, and nvcc for sm_90a. The GPU run against the reference is in
test_tuner_gpu_fused_run.py."""

from __future__ import annotations

import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.job_plan import specialize
from tunefleet.coordinator.models import parse_hf_config
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import build_source
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.intrinsics_wgmma import nvcc_arch
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.wgmma_schedule import apply_wgmma_paired_tiling
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

HOPPER = SpaceContext(Target.cuda("sm_90"))
CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "intermediate_size": 768,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": 100, "torch_dtype": "bfloat16"}  # fmt: skip
NVCC = shutil.which("nvcc")


def _task_func(op: str, n: int):
    cfg = parse_hf_config(CONFIG, "cfg.json", name="paired")
    task = next(t for t in model_tasks(cfg, Phase.PREFILL) if t.op == op)
    return specialize(task.func, {"n": n})


def _sampler(op: str, n: int, ctx: SpaceContext) -> SpaceSampler:
    func = _task_func(op, n)
    sketches = SpaceGenerator(*rules_for("cuda")).generate(func, ctx)
    return SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))


@pytest.mark.parametrize("op", ["dense+rope", "dense+silu_mul"])
def test_sm90_prefill_of_a_paired_epilogue_gets_wgmma_sketches_that_replay(op: str) -> None:
    sampler = _sampler(op, 256, HOPPER)
    names = [s.name for s in sampler.sketches]
    wgmma = [s for s in names if "gpu_tensor_core(dense_acc)" in s]
    assert len(wgmma) >= 4 and names[-1] == "default", names
    assert not any("gpu_multi_level_tiling" in s for s in names)  # the rule claims the block
    cands = sampler.sample_unique(random.Random(0), len(names), set(), max_tries=80)
    assert len(cands) == len(names)  # every sketch is one valid program
    for cand in cands:
        if sampler.sketches[cand.sketch].name == "default":
            continue
        src, again = (
            build_source(replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda")
            for _ in range(2)
        )
        assert again.source == src.source
        src = src.source
        assert "wgmma.mma_async" in src and "tf_swz128(" in src


def test_paired_tile_holds_both_halves_for_the_epilogue() -> None:
    """gate|up at I = 768, tile n = 128: block x covers gate and up columns 64 bx .. +64, the
    MMA's 128 columns are (half, j) with the up half 64 floats after the gate half."""
    func = _task_func("dense+silu_mul", 256)
    sch = Schedule(func)
    for name in ("up", "gate", "dense"):
        sch.compute_inline(sch.get_block(name))
    apply_wgmma_paired_tiling(
        sch, "silu_mul", "dense_acc", "bfloat16", pair=0, warpgroups=2, n=128, stages=3
    )
    ks = build_source(sch, "cuda")
    assert ks.grid == (768 // 64, 256 // 128, 1) and ks.block == (128, 2, 1)
    src = ks.source
    assert "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16" in src
    assert "float dense_acc_wgmma_accumulator[64];" in src  # 64 x 128 per warpgroup
    # the epilogue reads gate at column c and up at c + 64 of the same 128-wide row
    epilogue = src[src.index("expf(") - 600 :]
    assert "* 128)" in epilogue and "+ 64)]" in epilogue


def test_paired_tiling_refuses_what_does_not_fit() -> None:
    func = _task_func("dense+silu_mul", 256)
    sch = Schedule(func)
    for name in ("up", "gate", "dense"):
        sch.compute_inline(sch.get_block(name))
    with pytest.raises(ScheduleError, match="n in"):
        apply_wgmma_paired_tiling(
            sch, "silu_mul", "dense_acc", "bfloat16", pair=0, warpgroups=2, n=96, stages=3
        )
    with pytest.raises(ScheduleError, match="pair axis"):
        apply_wgmma_paired_tiling(
            sch, "silu_mul", "dense_acc", "bfloat16", pair=1, warpgroups=2, n=128, stages=3
        )


@pytest.mark.parametrize(("n", "ctx"), [(88, HOPPER), (256, SpaceContext(Target.cuda("sm_80")))])
def test_paired_wgmma_only_on_hopper_and_on_its_tiles(n: int, ctx: SpaceContext) -> None:
    """88 tokens on sm_90: the narrow WMMA tiles pad to 96, wgmma's to 128 (its 64-row
    tiles); 128-aligned tokens before sm_90 keep the SIMT tiling."""
    sketches = _sampler("dense+silu_mul", n, ctx).sketches
    names = [s.name for s in sketches]
    wgmma = [s.trace.as_python() for s in sketches if "wgmma" in s.trace.as_python()]
    if n == 88:
        assert wgmma and all("[40, 0, 0, 0]" in text for text in wgmma), names
        narrow = [s.trace.as_python() for s in sketches if "wmma_mma" in s.trace.as_python()]
        assert any("[8, 0, 0, 0]" in text for text in narrow), names
    else:
        assert not wgmma, names
        assert any("gpu_multi_level_tiling" in s for s in names), names


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("op", ["dense+rope", "dense+silu_mul"])
def test_paired_wgmma_compiles_for_sm90a(op: str) -> None:
    sampler = _sampler(op, 256, HOPPER)
    cand = next(
        c
        for c in sampler.sample_unique(random.Random(1), 8, set(), max_tries=80)
        if "gpu_tensor_core" in sampler.sketches[c.sketch].name
    )
    src = build_source(replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda")
    with tempfile.TemporaryDirectory(prefix="tf-nvcc-") as tmp:
        path = Path(tmp) / "k.cu"
        path.write_text(src.source)
        cmd = [NVCC, "-cubin", f"-arch={nvcc_arch('sm_90', src.source)}", "-O3",
               "-o", str(Path(tmp) / "k.cubin"), str(path)]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
