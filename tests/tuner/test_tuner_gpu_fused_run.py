"""Tuned candidates of the fused dense epilogues that pair columns (rope's halves, gate|up)
run on a real GPU against the task's own reference, at batched decode, an odd prefill
length and a prefill that fills wgmma tiles (sm_90), so that a sketch whose write-back misses
part of the output is caught here and not as a column of wrong results in a model job."""

from __future__ import annotations

import random

import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.job_plan import specialize
from tunefleet.coordinator.models import parse_hf_config
from tunefleet.coordinator.task_problems import task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import resolve_target

pytestmark = pytest.mark.gpu

FAST = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=20)
TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 384,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 100, "torch_dtype": "bfloat16"}  # fmt: skip


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("fused-kernels"))
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        yield resolve_target("cuda"), runner, BuildConfig(cache_dir=cache, timeout_s=120)


@pytest.mark.parametrize("op", ["dense+rope", "dense+silu_mul"])
@pytest.mark.parametrize(("phase", "dims"), [(Phase.DECODE, {"b": 16, "m": 64}),
                                             (Phase.PREFILL, {"n": 96}),
                                             (Phase.PREFILL, {"n": 256})])  # fmt: skip
def test_tiled_candidates_of_paired_epilogues_match_the_reference(gpu, op, phase, dims) -> None:
    target, runner, config = gpu
    cfg = parse_hf_config(TINY, "tiny.json", name="tiny-llama")
    task = next(t for t in model_tasks(cfg, phase) if t.op == op)
    func = specialize(task.func, dims)
    ctx = SpaceContext(target)
    sketches = SpaceGenerator(*rules_for("cuda")).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    cands = sampler.sample_unique(random.Random(0), 12, set())
    tiled = [c for c in cands  # SIMT tiles, or wgmma on sm_90 where the tokens fill its tiles
             if any(r in sampler.sketches[c.sketch].name
                    for r in ("gpu_multi_level_tiling", "gpu_tensor_core"))][:6]  # fmt: skip
    assert tiled, [s.name for s in sampler.sketches]
    problem = task_problem(task, dims)
    for cand in tiled:
        built = build(BuildInput(target, workload=func, trace=cand.trace), config)
        assert built.status is Status.OK, built.message
        result = runner.run(RunInput(built.artifact, problem, FAST))
        assert result.status is Status.OK, f"{cand.trace_hash[:12]}: {result.message}"
