"""GPU design spaces: which rule schedules each LLM kernel, limits, and nvcc-clean samples."""

from __future__ import annotations

import random

import pytest

from tunefleet.ir import build_source, ops
from tunefleet.ir.schedule import Schedule
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import GpuLimits, VerifyGpuLimits, default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cuda("sm_86"))
CASES = [
    ("dense", {"m": 1, "n": 256, "k": 1024}, "gpu_gemv"),
    ("dense", {"m": 256, "n": 128, "k": 128}, "gpu_tensor_core"),
    ("rmsnorm", {"m": 8, "n": 1024}, "gpu_rows"),
    ("softmax", {"m": 8, "n": 512}, "gpu_rows"),
    ("add", {"m": 8, "n": 64}, "gpu_elementwise"),
]


def _sampler(op: str, dims: dict[str, int]) -> SpaceSampler:
    func = ops.get_op(op).build(dims, "float16")
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, CTX)
    return SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))


@pytest.mark.parametrize(("op", "dims", "rule"), CASES)
def test_each_kernel_gets_its_gpu_rule(op: str, dims: dict[str, int], rule: str) -> None:
    sampler = _sampler(op, dims)
    assert all(s.name.startswith(rule) for s in sampler.sketches)
    cands = sampler.sample_unique(random.Random(0), 4, set())
    assert cands, f"no valid {op} candidate"
    for cand in cands:
        sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
        assert any(i.kind == "bind" for i in sch.trace.insts)


@pytest.mark.parametrize(("op", "dims", "rule"), CASES[:4])
def test_gpu_samples_compile_with_nvcc(op, dims, rule, nvcc_compiles) -> None:
    nvcc_compiles(_sampler(op, dims))


def test_gpu_limits_reject_oversized_blocks() -> None:
    func = ops.get_op("add").build({"m": 4, "n": 512}, "float16")
    sch = Schedule(func)
    i, j = sch.get_loops(sch.get_block("add"))
    sch.bind(i, "blockIdx.x")
    sch.bind(j, "threadIdx.x")
    assert VerifyGpuLimits().check(sch, CTX) is None  # 512 threads per block
    small = VerifyGpuLimits(GpuLimits(max_threads_per_block=256)).check(sch, CTX)
    assert small is not None and "512 threads" in small


def test_shared_memory_limit_follows_the_architecture() -> None:
    """A 128 KiB wgmma tiling (4 stages of 128 x 128) passes sm_90's opt-in limit (227 KiB)
    and is rejected under the 99 KiB that every sm_80+ card allows."""
    from tunefleet.ir.wgmma_schedule import apply_wgmma_tiling

    assert GpuLimits.for_arch("sm_90a") == GpuLimits.for_arch("sm_90")
    assert GpuLimits.for_arch("sm_90").max_shared_bytes == 227 * 1024
    assert GpuLimits.for_arch("sm_80").max_shared_bytes == 163 * 1024
    assert GpuLimits.for_arch("sm_89").max_shared_bytes == GpuLimits().max_shared_bytes
    sch = Schedule(ops.get_op("dense").build({"m": 256, "n": 512, "k": 256}, "float16"))
    apply_wgmma_tiling(sch, "dense", "dense_acc", "float16", warpgroups=2, n=128, stages=4)
    assert build_source(sch, "cuda").shared_bytes == 128 * 1024
    assert VerifyGpuLimits().check(sch, SpaceContext(Target.cuda("sm_90"))) is None
    for arch in ("sm_89", ""):
        reason = VerifyGpuLimits().check(sch, SpaceContext(Target.cuda(arch)))
        assert reason is not None and "shared memory" in reason


def _fused_sampler(name: str, dims: dict[str, int], without: str = "") -> SpaceSampler:
    """The CUDA space of a Llama-3-8B decode fused task, specialised at `dims` (the rule
    `without` left out of the space)."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.job_plan import specialize
    from tunefleet.coordinator.presets import PRESETS
    from tunefleet.coordinator.tasks import model_tasks

    task = next(t for t in model_tasks(PRESETS["llama-3-8b"], Phase.DECODE) if t.name == name)
    func = specialize(task.func, {"m": 1024, **dims})
    rules, global_rules = rules_for("cuda")
    rules = tuple(r for r in rules if r != without)
    sketches = SpaceGenerator(rules, global_rules).generate(func, CTX)
    return SpaceSampler(func, sketches, CTX, default_postprocs("cuda"))


@pytest.mark.parametrize("name", ["qkv_proj+rope", "gate_up_proj+act"])
@pytest.mark.parametrize(
    ("b", "rule"),
    [(1, "gpu_gemv"), (4, "gpu_gemv"), (12, "gpu_tensor_core"), (16, "gpu_tensor_core")],
)
def test_fused_epilogues_that_pair_columns_get_tiled_spaces(name, b, rule, nvcc_compiles) -> None:
    """rope and gate|up read two columns of the dense per output element; their spaces keep
    the pair in one thread's registers instead of falling back to the naive default (12
    sequences pad to the 16-row tensor-core tiles)."""
    sampler = _fused_sampler(name, {"b": b})
    assert any(f"{rule}(dense_acc)" in s.name for s in sampler.sketches), [
        s.name for s in sampler.sketches
    ]
    nvcc_compiles(sampler)


def test_rope_write_back_keeps_each_pair_in_one_thread() -> None:
    """The rope epilogue's output loops follow the output's dims ([t, heads, 2, d/2]) once
    reverse_compute_at has rebuilt them; the loop that picks within a pair must still end up
    innermost and whole, with every other loop split like the compute nest. Placed by
    position before the move, the pick loop was split by the d/2 tile factors under a guard,
    and most of the output was never written (wrong results on the GPU)."""
    from tunefleet.ir.schedule_tree import find_block
    from tunefleet.ir.stmt import TRUE

    # the SIMT tiling's own pair handling: 12 tokens would otherwise pad to tensor cores
    sampler = _fused_sampler("qkv_proj+rope", {"b": 12}, without="gpu_tensor_core")
    cands = sampler.sample_unique(random.Random(0), 6, set())
    tiled = [c for c in cands
             if "gpu_multi_level_tiling" in sampler.sketches[c.sketch].name]  # fmt: skip
    assert tiled, "no tiled rope candidate"
    for cand in tiled:
        sch = replay(sampler.func, cand.trace, decisions=cand.trace.decisions)
        out = sch.get_block("qkv_rope")
        loops = [sch.get(lp) for lp in sch.get_loops(out)]
        assert int(loops[-1].extent.value) == 2 and loops[-1].kind == "unrolled"
        found = find_block(sch.func, "qkv_rope")
        assert found is not None and found[0].predicate == TRUE, "write-back under a guard"


@pytest.mark.parametrize(("arch", "clustered"), [("sm_90", True), ("sm_86", False)])
def test_the_attention_default_sketch_follows_the_architecture(arch: str, clustered: bool) -> None:
    """The untuned default every space keeps is the one the target's GPU can run: decode
    attention split over a thread-block cluster from sm_90, a block per row before; on sm_90
    the unsplit rows follow as a second one-point sketch, for the buckets whose batch fills
    the GPU without the split, and a cluster per kv head's four query heads as a third."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.presets import PRESETS
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.tuner.space import default_sketches

    (task,) = [
        t
        for t in model_tasks(PRESETS["llama-3-8b"], Phase.DECODE)
        if t.name.startswith("attn_scores")
    ]
    sketches = default_sketches(task.func, SpaceContext(Target.cuda(arch)))
    names = ["default", "default_unclustered", "default_grouped"]
    assert [s.name for s in sketches] == names[: 1 + 2 * clustered]
    kernels = [build_source(replay(task.func, s.trace), target="cuda") for s in sketches]
    sources = [ks.source for ks in kernels]
    clusters = ["__cluster_dims__" in src for src in sources]
    assert clusters == [clustered, False, True][: len(sources)]
    if clustered:  # clusters of 8 blocks per query head, or per kv head (8 of them) grouped
        assert [ks.grid[0] for ks in kernels] == ["((b * 32) * 8)", "(b * 32)", "((b * 8) * 8)"]
    space = SpaceGenerator(*rules_for("cuda")).generate(task.func, SpaceContext(Target.cuda(arch)))
    assert ("default_unclustered" in [s.name for s in space]) is clustered
