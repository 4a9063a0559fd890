"""Design spaces: sketches per op, sampled schedules that stay correct, replay, postprocessors."""

from __future__ import annotations

import math
import random

import pytest

from tunefleet.ir import ops
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import trace_hash
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.mutators import MutateCategorical, MutateTileSize, MutatorMix
from tunefleet.tuner.postproc import VerifyCodegen, default_postprocs
from tunefleet.tuner.replay import replay, resample
from tunefleet.tuner.space import SpaceContext, SpaceError, SpaceGenerator, create_rule
from tunefleet.workers import BuildInput, MeasureConfig, MeasureInput, Problem
from tunefleet.workers.targets import Target

CTX = SpaceContext(Target.cpu(cores=2))
CASES = [
    (
        "dense",
        {"m": 4, "n": 24, "k": 64},
        {"multi_level_tiling", "packed_dense", "split_k_reduction"},
    ),
    ("dense", {"m": 16, "n": 128, "k": 32}, {"packed_dense"}),
    ("dense", {"m": 1, "n": 16, "k": 256}, {"split_k_reduction"}),
    ("matmul", {"m": 8, "n": 16, "k": 32}, {"multi_level_tiling", "split_k_reduction"}),
    ("rmsnorm", {"m": 6, "n": 128}, {"split_k_reduction", "vectorize_spatial"}),
    ("softmax", {"m": 6, "n": 96}, {"split_k_reduction", "vectorize_spatial"}),
    ("add", {"m": 6, "n": 40}, {"vectorize_spatial"}),
    ("q4_dense", {"m": 1, "n": 24, "k": 256}, {"split_k_reduction"}),
]


def _sketches(op: str, dims: dict[str, int]):
    func = ops.get_op(op).build(dims, "float32")
    return func, SpaceGenerator(with_default=False).generate(func, CTX, seed=0)


@pytest.mark.parametrize(("op", "dims", "rules"), CASES)
def test_sketches_use_the_expected_rules(op: str, dims: dict[str, int], rules: set[str]) -> None:
    _, sketches = _sketches(op, dims)
    used = {part.split("(")[0] for s in sketches for part in s.name.split("+")}
    assert rules <= used
    for s in sketches:
        assert any(i.kind.startswith("sample_") for i in s.trace.insts)


@pytest.mark.parametrize(("op", "dims", "rules"), CASES)
def test_sampled_schedules_match_numpy(op, dims, rules, executor, cpu) -> None:
    """Every valid sample of every sketch builds with gcc and matches numpy in the runner."""
    func, sketches = _sketches(op, dims)
    sampler = SpaceSampler(func, sketches, CTX, default_postprocs("cpu"))
    cands = sampler.sample_unique(random.Random(7), 6, set())
    assert cands, "the space must yield valid candidates"
    config = MeasureConfig(guard_noise=False, repeats=2, warmup_ms=0.5, min_repeat_ms=0.2)
    problem = Problem.create(op, dims, "float32")
    items = [
        MeasureInput(BuildInput(cpu, workload=func, trace=c.trace_json), problem, config)
        for c in cands
    ]
    for cand, res in zip(cands, executor.measure_all(items), strict=True):
        assert res.ok, f"{cand.trace.as_python()}\n{res.status}: {res.message[:500]}"


def _valid(func, trace, seed: int) -> bool:
    try:
        resample(func, trace, seed)
    except ScheduleError:
        return False
    return True


def test_resample_is_deterministic_and_replays_exactly() -> None:
    func, sketches = _sketches("dense", {"m": 8, "n": 32, "k": 64})
    for sketch in sketches:
        seed = next(s for s in range(50) if _valid(func, sketch.trace, s))
        a = resample(func, sketch.trace, seed)
        b = resample(func, sketch.trace, seed)
        assert a.trace == b.trace and a.func == b.func
        again = replay(func, a.trace, decisions=a.trace.decisions)
        assert again.func == a.func and trace_hash(again.trace) == trace_hash(a.trace)
    hashes = {
        trace_hash(resample(func, sketches[0].trace, s).trace)
        for s in range(12)
        if _valid(func, sketches[0].trace, s)
    }
    assert len(hashes) > 3, "different seeds must reach different points"


def test_mutators_change_decisions_only() -> None:
    func, sketches = _sketches("matmul", {"m": 16, "n": 32, "k": 64})
    seed = next(s for s in range(50) if _valid(func, sketches[0].trace, s))
    trace = resample(func, sketches[0].trace, seed).trace
    rng = random.Random(0)
    for mutator in (MutateTileSize(), MutateCategorical(), MutatorMix()):
        mutant = mutator.mutate(trace, rng)
        if mutant is None:
            continue
        assert mutant.insts == trace.insts
        changed = [i for i in trace.decisions if trace.decisions[i] != mutant.decisions[i]]
        assert len(changed) == 1
        try:
            sch = replay(func, mutant, decisions=mutant.decisions)
        except ScheduleError:
            continue
        assert sch.trace.decisions == mutant.decisions


def test_tile_mutation_keeps_the_product() -> None:
    func, sketches = _sketches("matmul", {"m": 16, "n": 32, "k": 64})
    seed = next(s for s in range(50) if _valid(func, sketches[0].trace, s))
    trace = resample(func, sketches[0].trace, seed).trace
    rng = random.Random(1)
    for _ in range(20):
        mutant = MutateTileSize().mutate(trace, rng)
        assert mutant is not None
        for i, d in trace.decisions.items():
            if trace.insts[i].kind == "sample_perfect_tile":
                assert math.prod(mutant.decisions[i]) == math.prod(d)


def test_codegen_postproc_rejects_thread_bindings_on_cpu() -> None:
    func = ops.get_op("add").build({"m": 4, "n": 8}, "float32")
    sch = Schedule(func)
    i, _ = sch.get_loops(sch.get_block("add"))
    sch.bind(i, "threadIdx.x")
    assert VerifyCodegen().check(sch, CTX) is not None
    assert VerifyCodegen().check(Schedule(func), CTX) is None


def test_unknown_rule_is_a_clear_error() -> None:
    with pytest.raises(SpaceError, match="unknown rule"):
        create_rule("no_such_rule")


def test_decode_gemv_samples_share_the_rows_across_cores() -> None:
    """m=1 leaves a unit row loop on top; the parallel loop must be one with work in it."""
    from tunefleet.ir.codegen import build_source
    from tunefleet.ir.lower import lower
    from tunefleet.ir.stmt import For
    from tunefleet.ir.visit import walk

    func, sketches = _sketches("dense", {"m": 1, "n": 256, "k": 256})
    sampler = SpaceSampler(func, sketches, CTX, default_postprocs("cpu"))
    for cand in sampler.sample_unique(random.Random(3), 8, set()):
        sch = cand.trace.apply(func)
        body = lower(sch.func).body
        parallel = [n for n in walk(body) if isinstance(n, For) and n.kind == "parallel"]
        assert parallel and all(int(p.extent.value) > 1 for p in parallel), cand.trace.as_python()
        assert "omp parallel for" in build_source(sch).source


def test_every_cpu_nest_samples_its_unroll_limit() -> None:
    """Each top-level nest carries a sampled auto-unroll limit; another decision changes
    which loops are unrolled, and only that (the instructions stay the same)."""
    from tunefleet.ir.auto_unroll import AUTO_UNROLL
    from tunefleet.ir.lower import lower
    from tunefleet.ir.stmt import For
    from tunefleet.ir.visit import walk
    from tunefleet.tuner.rule_auto_unroll import MAX_STEPS

    func, sketches = _sketches("softmax", {"m": 6, "n": 96})
    for sketch in sketches:
        seed = next(s for s in range(50) if _valid(func, sketch.trace, s))
        trace = resample(func, sketch.trace, seed).trace
        sites = [
            i
            for i in trace.decisions
            if trace.insts[i].kind == "sample_categorical"
            and list(trace.insts[i].inputs[0]) == list(MAX_STEPS)
        ]
        tops = [n for n in sketch.trace.insts if n.kind == "annotate"]
        assert sites and len(sites) == len(tops)
        kinds = {}
        for choice in (0, len(MAX_STEPS) - 1):
            decisions = {**trace.decisions, **{i: choice for i in sites}}
            sch = replay(func, trace, decisions=decisions)
            anns = [
                dict(n.annotations).get(AUTO_UNROLL)
                for n in walk(sch.func.body)
                if isinstance(n, For)
            ]
            assert MAX_STEPS[choice] in anns
            kinds[choice] = [n.kind for n in walk(lower(sch.func).body) if isinstance(n, For)]
        assert "unrolled" in kinds[len(MAX_STEPS) - 1]
        assert kinds[0].count("unrolled") < kinds[len(MAX_STEPS) - 1].count("unrolled")


@pytest.mark.parametrize("kind", ["cpu", "cuda"])
def test_every_space_holds_the_untuned_default_as_one_point(kind: str) -> None:
    """The last sketch is ir's default schedule: it samples to the very kernel a build without
    a trace makes, whatever the seed, so a search measures the default like any candidate."""
    from tunefleet.ir import build_source, default_schedule
    from tunefleet.tuner.space import rules_for

    ctx = CTX if kind == "cpu" else SpaceContext(Target.cuda("sm_90"))
    func = ops.get_op("dense").build({"m": 333, "n": 777, "k": 555}, "float32")
    sketches = SpaceGenerator(*rules_for(kind)).generate(func, ctx)
    assert sketches[-1].name == "default"
    assert [s.name for s in sketches[:-1]] == [
        s.name for s in SpaceGenerator(*rules_for(kind), with_default=False).generate(func, ctx)
    ]
    want = build_source(default_schedule(func, target=kind), target=kind).source
    for seed in (0, 1):
        got = build_source(resample(func, sketches[-1].trace, seed), target=kind).source
        assert got == want


def test_a_gpu_space_whose_rule_sketches_all_fail_is_left_with_the_default() -> None:
    """The fused decode attention on CUDA: every tiling leaves the scores in global memory,
    which no kernel can allocate; the default keeps them in shared memory and, with the same
    rows not split over a cluster, is what the task is measured at."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.job_plan import specialize
    from tunefleet.coordinator.models import ModelConfig
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.tuner.space import rules_for

    cfg = ModelConfig(name="t", family="llama", hidden_size=64, intermediate_size=96,
                      num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=100,
                      dtype="float16")  # fmt: skip
    task = next(t for t in model_tasks(cfg, Phase.DECODE) if t.kind == "attention")
    func = specialize(task.func, {"b": 1, "m": 64})
    ctx = SpaceContext(Target.cuda("sm_90"))
    sketches = SpaceGenerator(*rules_for("cuda")).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    cands = sampler.sample_unique(random.Random(0), 4, set(), max_tries=24)
    assert sorted(sketches[c.sketch].name for c in cands) == [
        "default",
        "default_grouped",
        "default_unclustered",
    ]
    assert sampler.rejected > 0  # the rules' tilings were drawn and refused
