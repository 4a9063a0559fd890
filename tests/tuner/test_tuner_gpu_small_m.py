"""Small-m dense (batched decode, short chunks): GEMV rows that hold 2-8 tokens, narrow
tensor-core tiles from m=16 (odd m padded to them); which sketches the rules make,
nvcc-clean samples, and (on a GPU) every sketch's candidates against numpy, plain and with
the epilogues of a decode step (residual add, rope, gate|up silu) at b=4, 13 and 16."""

from __future__ import annotations

import random
import re

import pytest

from tunefleet.ir import build_source, ops
from tunefleet.ir.annotation_keys import PIPELINE_STAGES
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.tensorcore_schedule import apply_wmma_paired_tiling
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.replay import replay
from tunefleet.tuner.rule_gpu_tensor_core import (
    PADS,
    SMALL_M_VARIANTS,
    TILE_KS,
    WARPS,
    row_paddings,
)
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.targets import Target

AMPERE = SpaceContext(Target.cuda("sm_80"))
HOPPER = SpaceContext(Target.cuda("sm_90"))
TINY = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "intermediate_size": 384,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 100, "torch_dtype": "float16"}  # fmt: skip


def _sampler(dims: dict[str, int], ctx: SpaceContext, dtype: str = "float16") -> SpaceSampler:
    func = ops.get_op("dense").build(dims, dtype)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, ctx)
    return SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))


def _fitting(m: int, n: int, k: int) -> int:
    return sum(m % tm == 0 and n % tn == 0 and k % tk == 0 for tm, tn, _, tk, _ in SMALL_M_VARIANTS)


@pytest.mark.parametrize("ctx", [AMPERE, HOPPER], ids=["sm_80", "sm_90"])
def test_batched_decode_gets_one_pipelined_wmma_sketch_per_fitting_tile(ctx) -> None:
    sampler = _sampler({"m": 16, "n": 4096, "k": 4096}, ctx)
    names = [s.name for s in sampler.sketches]
    assert names == ["gpu_tensor_core(dense)"] * _fitting(16, 4096, 4096), names
    for sketch in sampler.sketches:
        text = sketch.trace.as_python()
        assert "wmma_mma_f16_f32" in text and PIPELINE_STAGES in text
    cands = sampler.sample_unique(random.Random(0), len(names), set(), max_tries=60)
    assert len(cands) == len(names)  # every tile passes the limits of the architecture


def test_hopper_keeps_wgmma_beside_the_narrow_tiles_at_m_64() -> None:
    sampler = _sampler({"m": 64, "n": 4096, "k": 14336}, HOPPER)
    kinds = ["wgmma" in s.trace.as_python() for s in sampler.sketches]
    assert kinds.count(False) == _fitting(64, 4096, 14336) and kinds.count(True) >= 1


@pytest.mark.parametrize("ctx", [AMPERE, HOPPER], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize(("m", "padded"), [(24, 32), (333, 336), (9, 16)])
def test_m_off_the_16_grid_is_padded_to_the_narrow_tiles(ctx, m, padded) -> None:
    """Odd token counts pad their rows to the fragment (pad_spatial) and take the narrow
    tiles of the padded m; x's padded copy is the shared tile, read at clamped rows."""
    sampler = _sampler({"m": m, "n": 4096, "k": 4096}, ctx)
    narrow = [s for s in sampler.sketches if f"[{padded - m}, 0, 0]" in s.trace.as_python()]
    assert len(narrow) == _fitting(padded, 4096, 4096)
    for sketch in sampler.sketches:  # 333 also pads to 384 for the wide tiles
        text = sketch.trace.as_python()
        assert "sch.pad_spatial(b0, [" in text and "mma" in text
    cand = sampler.sample_unique(random.Random(0), 1, set())[0]
    src = build_source(replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda")
    assert f"< ({m - 1}) ? " in src.source  # the clamped row of the x fetch
    assert f"< {m})" in src.source  # the guarded store of the output


@pytest.mark.parametrize(
    ("m", "pads"),
    [(333, [3, 51]), (336, [0, 48]), (24, [8]), (2000, [0, 48]), (64, [0]), (88, [8, 40])],
)
def test_rows_pad_to_the_fragment_and_to_the_wide_tile_when_it_is_cheap(m, pads) -> None:
    assert row_paddings(m) == pads


def test_near_multiples_of_128_also_get_the_wide_tiles() -> None:
    sampler = _sampler({"m": 2000, "n": 4096, "k": 4096}, AMPERE)
    wide = [s for s in sampler.sketches if "[48, 0, 0]" in s.trace.as_python()]
    assert len(wide) == len(WARPS) * len(TILE_KS) * len(PADS)


def test_near_multiples_of_128_get_padded_wgmma_on_hopper(nvcc_compiles) -> None:
    sampler = _sampler({"m": 2000, "n": 512, "k": 1024}, HOPPER)
    wgmma = [s for s in sampler.sketches if "wgmma" in s.trace.as_python()]
    assert len(wgmma) >= 4 and all("[48, 0, 0]" in s.trace.as_python() for s in wgmma)
    only = SpaceSampler(sampler.func, wgmma, HOPPER, default_postprocs("cuda"))
    nvcc_compiles(only, 1, arch="sm_90a")


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("m", [32, 333])
def test_small_m_samples_compile_with_nvcc(seed, m, nvcc_compiles) -> None:
    nvcc_compiles(_sampler({"m": m, "n": 512, "k": 1024}, AMPERE), seed)


@pytest.mark.parametrize("m", [2, 5, 8])
def test_a_few_tokens_share_each_gemv_row(m: int) -> None:
    """Up to 8 tokens: one GEMV sketch whose rows hold every token (an accumulator each, in
    registers), so the weight is read once, not once per token as the SIMT tiles do."""
    sampler = _sampler({"m": m, "n": 4096, "k": 4096}, HOPPER)
    assert [s.name for s in sampler.sketches] == ["gpu_gemv(dense)"]
    cand = sampler.sample_unique(random.Random(0), 1, set())[0]
    src = build_source(replay(sampler.func, cand.trace, decisions=cand.trace.decisions), "cuda")
    assert f"float dense_acc[{m}]" in src.source and "tf_block_add" in src.source


def test_nine_tokens_leave_the_gemv_rows_for_padded_fragments() -> None:
    names = {s.name for s in _sampler({"m": 9, "n": 4096, "k": 4096}, HOPPER).sketches}
    assert names == {"gpu_tensor_core(dense)"}


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    from tunefleet.workers.builder import BuildConfig
    from tunefleet.workers.runner import Runner, RunnerConfig
    from tunefleet.workers.targets import resolve_target

    cache = str(tmp_path_factory.mktemp("small-m-kernels"))
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        yield resolve_target("cuda"), runner, BuildConfig(cache_dir=cache, timeout_s=120)


def _run_every_sketch(
    gpu, func, problem, sampler: SpaceSampler, rule: str = "gpu_tensor_core"
) -> int:
    """Build and check one candidate of each sketch of `rule`; returns how many ran."""
    from tunefleet.workers.builder import BuildInput, build
    from tunefleet.workers.results import MeasureConfig, RunInput, Status

    target, runner, config = gpu
    fast = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=20)
    cands = sampler.sample_unique(random.Random(0), 3 * len(sampler.sketches), set(), max_tries=90)
    seen: set[int] = set()
    for cand in cands:
        if cand.sketch in seen or rule not in sampler.sketches[cand.sketch].name:
            continue
        seen.add(cand.sketch)
        built = build(BuildInput(target, workload=func, trace=cand.trace), config)
        assert built.status is Status.OK, built.message
        result = runner.run(RunInput(built.artifact, problem, fast))
        assert result.status is Status.OK, f"{cand.trace.as_python()}\n{result.message}"
    return len(seen)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    "dims",
    [
        {"m": 16, "n": 384, "k": 512},
        {"m": 64, "n": 128, "k": 768},
        {"m": 37, "n": 128, "k": 256},  # padded to 48: narrow tiles, clamped x rows
        {"m": 250, "n": 128, "k": 128},  # padded to 256: the 128 x 128 tiles
    ],
)
def test_every_small_m_sketch_matches_numpy_on_the_gpu(gpu, dims, dtype) -> None:
    from tunefleet.workers.results import Problem

    target = gpu[0]
    func = ops.get_op("dense").build(dims, dtype)
    ctx = SpaceContext(target)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    ran = _run_every_sketch(gpu, func, Problem.create("dense", dims, dtype), sampler)
    assert ran >= min(len(sampler.sketches), 4) and ran == len(
        [s for s in sampler.sketches if "gpu_tensor_core" in s.name]
    )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("m", [2, 5, 8])
def test_gemv_rows_of_a_few_tokens_match_numpy_on_the_gpu(gpu, m, dtype) -> None:
    from tunefleet.workers.results import Problem

    dims = {"m": m, "n": 320, "k": 1024}
    func = ops.get_op("dense").build(dims, dtype)
    ctx = SpaceContext(gpu[0])
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    assert _run_every_sketch(gpu, func, Problem.create("dense", dims, dtype), sampler, "gpu_gemv")


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["dense+add", "dense+rope", "dense+silu_mul"])
@pytest.mark.parametrize(
    ("b", "rule", "least"),
    [(4, "gpu_gemv", 1), (16, "gpu_tensor_core", 3), (13, "gpu_tensor_core", 3)],
)
def test_decode_epilogues_at_small_batches_run(gpu, op, b, rule, least) -> None:
    """The residual add, rope's halves and gate|up's silu_mul of a decode step at b=4 (GEMV
    rows of 4 tokens) and b=16 (narrow tensor-core tiles), from every sketch, against the
    task's own reference."""
    from tunefleet.coordinator.task_problems import task_problem

    func, task = _decode_task(op, b)
    ctx = SpaceContext(gpu[0])
    sketches = SpaceGenerator(*rules_for("cuda")).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    ran = _run_every_sketch(gpu, func, task_problem(task, {"b": b, "m": 64}), sampler, rule)
    assert ran >= least and ran == len([s for s in sampler.sketches if rule in s.name])


def _decode_task(op: str, b: int):  # type: ignore[no-untyped-def]
    """The decode task `op` of a small Llama at batch `b`, specialised: (func, task)."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.job_plan import specialize
    from tunefleet.coordinator.models import parse_hf_config
    from tunefleet.coordinator.tasks import model_tasks

    cfg = parse_hf_config(TINY, "tiny.json", name="tiny-llama")
    task = next(t for t in model_tasks(cfg, Phase.DECODE) if t.op == op)
    return specialize(task.func, {"b": b, "m": 64}), task


@pytest.mark.parametrize("b", [16, 13])
@pytest.mark.parametrize("op", ["dense+rope", "dense+silu_mul"])
@pytest.mark.parametrize("ctx", [AMPERE, HOPPER], ids=["sm_80", "sm_90"])
def test_paired_epilogues_at_small_batches_get_narrow_tiles_that_replay(ctx, op, b) -> None:
    """Both halves of a pair come from one block's tile: half the warps along n each; 13
    sequences pad to 16 rows."""
    func, _ = _decode_task(op, b)
    sketches = SpaceGenerator(*rules_for("cuda")).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    names = [s.name for s in sampler.sketches]
    narrow = [s for s in sampler.sketches if "wmma_mma_f16_f32" in s.trace.as_python()]
    assert len(narrow) == len(names) - 1 and names[-1] == "default", names
    cands = sampler.sample_unique(random.Random(0), len(names), set(), max_tries=80)
    assert len(cands) == len(names)
    for cand in [c for c in cands if sampler.sketches[c.sketch] in narrow][:2]:
        first, again = (
            build_source(replay(func, cand.trace, decisions=cand.trace.decisions), "cuda").source
            for _ in range(2)
        )
        assert first == again and "load_matrix_sync" in first
        # fragments indexed by constants only: a thread index would put them in local memory
        frags = re.findall(r"wmma_accumulator\[([^\]]*)\]", first)
        assert frags and not any("Idx" in f for f in frags), frags


def test_paired_tiling_refuses_an_odd_warp_count() -> None:
    func, _ = _decode_task("dense+silu_mul", 16)
    sch = Schedule(func)
    for name in ("up", "gate", "dense"):
        sch.compute_inline(sch.get_block(name))
    with pytest.raises(ScheduleError, match="half the warps along n"):
        apply_wmma_paired_tiling(
            sch, "silu_mul", "dense_acc", "wmma_mma_f16_f32",
            pair=0, warps=(1, 3), tile=(16, 96), tile_k=64, pad=8, stages=3,
        )  # fmt: skip


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("op", "dims"),
    [
        ("dense", {"m": 1, "n": 320, "k": 1024}),
        ("dense", {"m": 5, "n": 320, "k": 1024}),  # GEMV rows of a few tokens
        ("q4_dense", {"m": 1, "n": 256, "k": 512}),  # 4-bit weights dequantised in the lanes
        ("q4_dense", {"m": 13, "n": 64, "k": 256}),  # 13 sequences share each 4-bit row
    ],
)
def test_every_gemv_sketch_matches_numpy_in_the_interpreter(
    every_sketch_interprets, op, dims, dtype
) -> None:
    from tunefleet.workers.results import Problem

    func = ops.get_op(op).build(dims, dtype)
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, HOPPER)
    sampler = SpaceSampler(func, sketches, HOPPER, default_postprocs("cuda"))
    assert every_sketch_interprets(sampler, Problem.create(op, dims, dtype)) >= 1


@pytest.mark.parametrize("op", ["dense+add", "dense+rope", "dense+silu_mul"])
def test_decode_epilogues_of_gemv_rows_match_the_reference_in_the_interpreter(
    every_sketch_interprets, op
) -> None:
    """The b=4 decode epilogues (GEMV rows of 4 tokens), every sketch but tensor cores."""
    from tunefleet.coordinator.task_problems import task_problem

    func, task = _decode_task(op, 4)
    sketches = SpaceGenerator(*rules_for("cuda")).generate(func, HOPPER)
    sampler = SpaceSampler(func, sketches, HOPPER, default_postprocs("cuda"))
    assert every_sketch_interprets(sampler, task_problem(task, {"b": 4, "m": 64})) >= 2


@pytest.mark.parametrize(("m", "claimed"), [(16, True), (17, False)])
def test_four_bit_rows_take_up_to_16_tokens(m: int, claimed: bool) -> None:
    """A 4-bit dense has no tensor-core tiling: up to 16 tokens share a GEMV row (each word
    dequantised once for all of them) instead of the SIMT tiling (589 us at m=16 on an H200
    against 13.6 us for torch's fp16 dense)."""
    func = ops.get_op("q4_dense").build({"m": m, "n": 4096, "k": 4096}, "float16")
    names = [s.name for s in SpaceGenerator(*rules_for("cuda")).generate(func, HOPPER)]
    assert ("gpu_gemv(q4_dense)" in names) is claimed, names


@pytest.mark.parametrize("ctx", [AMPERE, HOPPER], ids=["sm_80", "sm_90"])
@pytest.mark.parametrize(
    "dims",
    [
        {"m": 37, "n": 64, "k": 64},  # padded to 48: narrow tiles, clamped x rows
        {"m": 120, "n": 128, "k": 64},  # padded to 128: the wide tiles and wgmma
        {"m": 64, "n": 64, "k": 128},  # the 64-row tiles
    ],
)
def test_every_tensor_core_sketch_matches_numpy_in_the_interpreter(
    every_sketch_interprets, ctx, dims
) -> None:
    from tunefleet.workers.results import Problem

    func = ops.get_op("dense").build(dims, "float16")
    sketches = SpaceGenerator(*rules_for("cuda"), with_default=False).generate(func, ctx)
    sampler = SpaceSampler(func, sketches, ctx, default_postprocs("cuda"))
    assert every_sketch_interprets(sampler, Problem.create("dense", dims, "float16")) == len(
        sketches
    )
