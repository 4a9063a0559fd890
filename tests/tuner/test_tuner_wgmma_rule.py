"""The tensor-core rule on sm_90: wgmma sketches for dense, WMMA elsewhere; all valid."""

from __future__ import annotations

import random

from tunefleet.ir import build_source, ops
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.rule_gpu_tensor_core import WGMMA_VARIANTS
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

HOPPER = SpaceContext(Target.cuda("sm_90"))


def _sampler(op: str, dims: dict[str, int], ctx: SpaceContext, dtype: str = "float16"):
    func = ops.get_op(op).build(dims, dtype)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, ctx)
    return SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))


def test_sm90_dense_gets_only_wgmma_sketches_that_all_pass_the_limits() -> None:
    sampler = _sampler("dense", {"m": 256, "n": 512, "k": 128}, HOPPER)
    assert len(sampler.sketches) == len(WGMMA_VARIANTS)
    cands = sampler.sample_unique(random.Random(0), len(WGMMA_VARIANTS), set(), max_tries=60)
    assert len(cands) == len(WGMMA_VARIANTS)  # each sketch is one program, all valid
    for cand in cands[:2]:
        src = build_source(
            replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda"
        ).source
        assert "wgmma.mma_async" in src and "tf_swz128(" in src


def test_wgmma_needs_sm90_a_dense_and_fitting_sizes() -> None:
    def kinds(op: str, dims: dict[str, int], ctx: SpaceContext, dtype: str = "float16"):
        sampler = _sampler(op, dims, ctx, dtype)
        return {"wgmma" in s.trace.as_python() for s in sampler.sketches}

    assert kinds("dense", {"m": 256, "n": 256, "k": 128}, SpaceContext(Target.cuda("sm_80"))) == {
        False
    }
    assert kinds("dense", {"m": 256, "n": 256, "k": 128}, HOPPER, "bfloat16") == {True}
    assert kinds("matmul", {"m": 256, "n": 256, "k": 128}, HOPPER) == {False}  # b is n-major
    assert kinds("dense", {"m": 256, "n": 256, "k": 96}, HOPPER) == {False}  # k not 64-aligned
