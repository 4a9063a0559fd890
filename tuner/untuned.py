"""What a compiled model runs where no record exists: a fixed tensor-core tiling beats the
untuned default by orders of magnitude on the GEMM family.

The untuned default of a dense on CUDA is a warp per output (`ir.default_schedule_cuda`):
right for decode's GEMVs, and 0.25 TFLOP/s on a 2048-token prefill, where a Llama-3-8B
prompt then took seconds. The `gpu_tensor_core` rule's sketches are structural (no sampled
decision: each is one fixed WMMA or wgmma tiling) and need constant sizes, so at a bucket's
point the first of them that passes the postprocessors is a kernel that needs no search.
"""

from __future__ import annotations

import random

from tunefleet.ir.stmt import PrimFunc

from .candidates import Candidate, SpaceSampler
from .postproc import default_postprocs
from .space import SpaceContext, SpaceGenerator, rules_for

RULE = "gpu_tensor_core"


def fixed_tensor_core_candidate(func: PrimFunc, ctx: SpaceContext) -> Candidate | None:
    """The first valid tensor-core sketch of `func`'s CUDA space that has no sampling
    decision (one fixed point), as a candidate; None on the CPU, for symbolic sizes, or where
    the space has none (decode GEMVs, rows, attention)."""
    if not ctx.is_gpu:
        return None
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, ctx)
    fixed = [s for s in sketches if RULE in s.name and not s.trace.decisions]
    for sketch in fixed:
        sampler = SpaceSampler(func, [sketch], ctx, default_postprocs("cuda"))
        found = sampler.sample_unique(random.Random(0), 1, set(), max_tries=1)
        if found:
            return found[0]
    return None
