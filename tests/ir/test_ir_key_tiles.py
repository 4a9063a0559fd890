"""Prefill attention in key tiles (`ir.default_key_tiles`): the form's two passes match numpy
in the GPU interpreter at odd sizes (prompts shorter than a block's tokens, kv lengths no
tile divides, a kv length of 1), its shared memory does not grow with the prompt, nvcc
compiles it, and on a GPU it matches the task's reference at Llama-3-8B's heads."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.presets import resolve_model
from tunefleet.coordinator.task_problems import task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import build_source
from tunefleet.ir.default_key_tiles import TILE, key_tiled, key_tiles_schedule
from tunefleet.ir.default_schedule_cuda import default_cuda_schedule
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import BinOp, Var, const
from tunefleet.ir.gpu_interpreter import interpret
from tunefleet.ir.lower import lower
from tunefleet.ir.simplify import simplify
from tunefleet.ir.stmt import For
from tunefleet.ir.visit import substitute, walk
from tunefleet.workers.checking import compare_outputs, default_tolerance
from tunefleet.workers.inputs import resolve_op

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))
from runtime_models import tiny

NVCC = shutil.which("nvcc")


def _attention(cfg, phase: Phase = Phase.PREFILL):
    (task,) = [t for t in model_tasks(cfg, phase) if t.name.startswith("attn_scores")]
    return task


def _check(task, dims: dict[str, int], func=None) -> tuple[float, int]:
    problem = task_problem(task, dims)
    op, attrs = resolve_op(problem.op), problem.attr_values
    dtype = task.func.params[0].dtype
    inputs = list(op.make_inputs(dims, dtype, np.random.default_rng(3), **attrs))
    ref = op.reference(*inputs, **attrs)
    (out,) = interpret((func or default_cuda_schedule(task.func)).mod, inputs, dims)
    return compare_outputs([out], [dtype], [ref], default_tolerance(dtype))


def test_only_the_prompt_phase_is_written_in_key_tiles() -> None:
    cfg = tiny("llama")
    assert key_tiled(_attention(cfg).func)
    decode = _attention(cfg, Phase.DECODE).func
    assert not key_tiled(decode)
    with pytest.raises(ScheduleError, match="not attention in key tiles"):
        key_tiles_schedule(decode)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    ("n", "m"),
    [(1, 1), (5, 37), (3, TILE + 1), (11, 2 * TILE + 7), (9, 9)],
    ids=["one_key", "short", "a_key_past_the_tile", "tiles_and_a_tail", "prompt_only"],
)
def test_key_tiles_match_numpy(n, m, dtype) -> None:
    err, bad = _check(_attention(replace(tiny("llama"), dtype=dtype)), {"n": n, "m": m})
    assert bad == 0, err


@pytest.mark.parametrize(
    "form",
    [{"group": 1, "rows": 3}, {"group": 2, "rows": 1}, {"group": 2, "partials": False},
     {"group": 2, "trim": False}],
)  # fmt: skip
def test_other_row_tilings_match_numpy(form) -> None:
    task = _attention(replace(tiny("qwen2"), dtype="bfloat16"))
    err, bad = _check(task, {"n": 7, "m": 150}, key_tiles_schedule(task.func, **form))
    assert bad == 0, err


def test_the_output_depends_on_the_causal_mask() -> None:
    """The check can fail: the same output against attention without the mask (every
    token seeing the whole prompt) is wrong."""
    task = _attention(replace(tiny("llama"), dtype="float32"))
    dims = {"n": 6, "m": 6}
    problem = task_problem(task, dims)
    op = resolve_op(problem.op)
    q, k, v = op.make_inputs(dims, "float32", np.random.default_rng(3), **problem.attr_values)
    (out,) = interpret(default_cuda_schedule(task.func).mod, [q, k, v], dims)
    group = q.shape[1] // k.shape[1]
    ke, ve = (np.repeat(a.astype(np.float64), group, axis=1) for a in (k, v))
    s = q @ ke.transpose(0, 1, 3, 2)
    p = np.exp(s - s.max(-1, keepdims=True))
    unmasked = (p / p.sum(-1, keepdims=True)) @ ve
    assert compare_outputs([out], ["float32"], [op.reference(q, k, v, **problem.attr_values)],
                           default_tolerance("float32"))[1] == 0  # fmt: skip
    assert compare_outputs([out], ["float32"], [unmasked], default_tolerance("float32"))[1] > 0


def test_a_blocks_key_loops_stop_at_its_last_visible_key() -> None:
    """Llama-3-8B, a 300-token prompt: both key loops (the max's and the tiles') of the
    first 8 tokens run one step of 128 keys, those of the last tokens all three; a prompt
    after 1000 cached tokens reads every cached key from its first block on."""
    func = lower(default_cuda_schedule(_attention(resolve_model("llama-3-8b")).func).mod)
    trimmed = [f.extent for f in walk(func.body) if isinstance(f, For)
               and any(isinstance(e, BinOp) and e.op == "min" for e in walk(f.extent))]  # fmt: skip
    assert len(trimmed) == 2

    def steps(extent, n: int, m: int, block: int) -> int:
        env = {Var("n"): const(n), Var("m"): const(m), Var("blockIdx_x"): const(block)}
        return int(simplify(substitute(extent, env)).value)

    tiles = (300 + 7) // 8  # token tiles of one kv head
    for extent in trimmed:
        assert [steps(extent, 300, 300, b) for b in (0, 15, 16, tiles - 1)] == [1, 1, 2, 3]
        assert steps(extent, 300, 1300, 0) == 8  # keys 0..1007 visible: ceil(1008 / 128)


def test_shared_memory_does_not_grow_with_the_prompt() -> None:
    """Llama-3-8B's heads: the block's shared arrays are constant (no symbolic size), 40 KB
    and a little: the block's queries for each pass and a tile's weights (bf16), the rows'
    sums of d + 1 columns (fp32)."""
    ks = build_source(default_cuda_schedule(_attention(resolve_model("llama-3-8b")).func), "cuda")
    shared = [line for line in ks.source.splitlines() if "__shared__" in line]
    assert ks.shared_bytes == 0 and ks.block == (128, 1, 1)
    sizes = {name: int(size) for line in shared
             for name, size in [line.split()[-1].rstrip(";").rstrip("]").split("[")]}  # fmt: skip
    assert sizes["probs"] == 4 * 8 * TILE and sizes["context_acc"] == 4 * 8 * 129
    assert sizes["q_shared"] == sizes["q_shared_1"] == 4 * 8 * 128
    assert ks.grid == ("(((n + 7) // 8) * 8)", 1, 1)  # 8 kv heads x ceil(n / 8) token tiles


def test_each_key_and_value_is_read_once_for_a_threads_rows() -> None:
    """In the lowered Llama-3-8B kernel the values are read in one place, under the key and
    a column loop but no row loop (one load serves the thread's 8 rows), the weights under
    the key loop alone, and the queries from global memory only by the two shared copies."""
    from tunefleet.ir.expr import BufferLoad, Const

    func = default_cuda_schedule(_attention(resolve_model("llama-3-8b")).func).mod
    reads: dict[str, list[tuple[int, ...]]] = {}

    def visit(node, loops: tuple[int, ...]) -> None:
        if isinstance(node, For):
            inner = node.kind != "thread_binding" and isinstance(node.extent, Const)
            visit(node.body, (*loops, node.extent.value) if inner else loops)
            return
        if isinstance(node, BufferLoad):
            reads.setdefault(node.buffer.name, []).append(loops)
        if dataclasses.is_dataclass(node):
            for f in dataclasses.fields(node):
                child = getattr(node, f.name)
                for c in child if isinstance(child, tuple) else (child,):
                    visit(c, loops)

    visit(lower(func).body, ())
    (values,) = reads["v_cache"]
    assert values[-2:] == (128, 5)  # keys of the tile, the thread's columns
    weights = [r for r in reads["probs"] if 128 in r]
    assert weights and all(r[-1] in (4, 2) and 5 not in r for r in weights)
    assert len(reads["q"]) == 2


@pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
@pytest.mark.parametrize(("form", "most"), [("default", 32), ("tensor_cores", 0)])
def test_key_tiles_compile_for_sm_90_without_spills(form, most, tmp_path) -> None:
    """Both forms at Llama-3-8B's heads; the default's hoisted divisions
    (pass_hoist_divisions) may cost a few bytes."""
    from tunefleet.ir.key_tiles_mma import key_tiles_mma_schedule

    func = _attention(resolve_model("llama-3-8b")).func
    sch = default_cuda_schedule(func) if form == "default" else key_tiles_mma_schedule(func, 4)
    ks = build_source(sch, "cuda")
    src = tmp_path / "k.cu"
    src.write_text(ks.source)
    cmd = [NVCC, "-cubin", "-arch=sm_90", "-O3", "-Xptxas", "-v", "-o", str(tmp_path / "k.cubin"),
           str(src)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    spilled = [int(x) for x in re.findall(r"(\d+) bytes spill stores", r.stderr)]
    assert spilled and max(spilled) <= most, r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["default", "tensor_cores"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("n", "m"), [(37, 300), (1, 1), (200, 200)])
def test_key_tiles_match_the_reference_on_a_gpu(n, m, dtype, form, tmp_path) -> None:
    """The default form and the scores on tensor cores (`ir.key_tiles_mma`) at Llama-3-8B's
    heads."""
    from tunefleet.ir.key_tiles_mma import key_tiles_mma_schedule
    from tunefleet.workers.builder import BuildConfig, BuildInput, build
    from tunefleet.workers.results import MeasureConfig, RunInput, Status
    from tunefleet.workers.runner import Runner, RunnerConfig
    from tunefleet.workers.targets import resolve_target

    task = _attention(replace(resolve_model("llama-3-8b"), dtype=dtype))
    fast = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2)
    sch = (default_cuda_schedule(task.func) if form == "default"
           else key_tiles_mma_schedule(task.func, group=4))  # fmt: skip
    ks = build_source(sch, target="cuda")
    cache = str(tmp_path)
    built = build(BuildInput(resolve_target("cuda"), kernel=ks), BuildConfig(cache_dir=cache))
    assert built.status is Status.OK, built.message
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        result = runner.run(RunInput(built.artifact, task_problem(task, {"n": n, "m": m}), fast))
    assert result.status is Status.OK, result.message


def test_the_prompt_attention_space_holds_three_token_counts_and_tensor_cores() -> None:
    """The tuner's space for a prompt's attention on CUDA: the default (8 tokens a block)
    and the same form with 4 and 16, and from sm_80 in fp16 / bf16 the scores on tensor
    cores (`key_tiles_mma`), each one point, each replaying to its own schedule."""
    from tunefleet.tuner.replay import resample
    from tunefleet.tuner.space import KEY_TILE_ROWS, SpaceContext, default_sketches
    from tunefleet.workers.targets import Target

    task = _attention(replace(tiny("llama"), dtype="bfloat16"))
    sketches = default_sketches(task.func, SpaceContext(Target.cuda("sm_90")))
    rows = [f"key_tiles_{r}" for r in KEY_TILE_ROWS]
    assert [s.name for s in sketches] == ["default", *rows, "key_tiles_mma"]
    assert all(not s.trace.decisions for s in sketches)
    assert len({s.trace.as_python() for s in sketches}) == 4
    older = default_sketches(task.func, SpaceContext(Target.cuda("sm_75")))
    assert [s.name for s in older] == ["default", *rows]
    fp32 = _attention(tiny("llama"))
    assert "key_tiles_mma" not in [s.name for s in default_sketches(fp32.func, SpaceContext(
        Target.cuda("sm_90")))]  # fmt: skip
    for s in sketches[1:]:
        err, bad = _check(task, {"n": 7, "m": 40}, resample(task.func, s.trace, 0))
        assert bad == 0, (s.name, err)
