"""Every task kind is checkable: its kernel runs against the reference composed from its op chain.

Tiny Hugging Face configs of each supported family (GQA, MQA, MHA, qkv bias, GeGLU, scaled
embeddings; bf16, fp16 and fp32) are lowered to tasks; each task's default CPU schedule and a
few sampled candidates are compiled by the workers builder and checked by the CPU runner
against `task_problem`, at non-power-of-two dims (n=5 new tokens, m=7 kv length, b=3).
"""

from __future__ import annotations

import pickle
import random
from dataclasses import replace

import numpy as np
import pytest

from tunefleet import ir
from tunefleet.coordinator.buckets import DEFAULT_BUCKETS
from tunefleet.coordinator.fusion import FusedCall
from tunefleet.coordinator.graph import Phase, Quant
from tunefleet.coordinator.kernels import build_func
from tunefleet.coordinator.models import parse_hf_config
from tunefleet.coordinator.presets import PRESETS
from tunefleet.coordinator.task_problems import (
    CHAIN_KINDS,
    TASK_CHAIN,
    Chain,
    TaskProblemError,
    task_buckets,
    task_dims,
    task_problem,
)
from tunefleet.coordinator.tasks import Task, model_tasks
from tunefleet.ir.analysis import buffer_elements
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.checking import storage_dtype
from tunefleet.workers.inputs import resolve_op
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import Target, detect_cpu

DIMS = {"b": 3, "n": 5, "m": 7}
FAST = MeasureConfig(guard_noise=False, warmup_ms=0.5, repeats=1, min_repeat_ms=0.1, timeout_s=20)

_BASE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 100}  # fmt: skip
TINY = {
    "llama": {**_BASE, "architectures": ["LlamaForCausalLM"], "num_key_value_heads": 2,
              "torch_dtype": "bfloat16"},
    "mistral": {**_BASE, "architectures": ["MistralForCausalLM"], "num_key_value_heads": 2,
                "torch_dtype": "float32"},
    "qwen2": {**_BASE, "architectures": ["Qwen2ForCausalLM"], "num_key_value_heads": 2,
              "torch_dtype": "float16", "rms_norm_eps": 1e-6},
    "gemma": {**_BASE, "architectures": ["GemmaForCausalLM"], "num_key_value_heads": 1,
              "head_dim": 16, "torch_dtype": "bfloat16", "hidden_act": "gelu_pytorch_tanh"},
    "phi3": {**_BASE, "architectures": ["Phi3ForCausalLM"], "num_key_value_heads": 4,
             "torch_dtype": "bfloat16"},
}  # fmt: skip


def tiny(family: str):
    return parse_hf_config(TINY[family], f"{family}.json", name=f"tiny-{family}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("task-kernels"))


@pytest.fixture(scope="module")
def build_config(cache_dir: str) -> BuildConfig:
    return BuildConfig(cache_dir=cache_dir, timeout_s=60)


@pytest.fixture(scope="module")
def runner(cache_dir: str):
    with Runner(RunnerConfig(device="cpu", cache_dir=cache_dir)) as r:
        yield r


def check(runner: Runner, build_config: BuildConfig, task: Task, func=None, trace=None):
    """Build `func` (default: the task's) on the host CPU and check it against the task."""
    built = build(BuildInput(detect_cpu(), workload=func or task.func, trace=trace), build_config)
    assert built.status is Status.OK, f"{task.name}: {built.message}"
    return runner.run(RunInput(built.artifact, task_problem(task, DIMS), FAST))


# ------------------------------------------------------------------ the problem itself


def test_the_problem_is_plain_data_the_runner_resolves() -> None:
    task = next(t for t in model_tasks(tiny("qwen2"), Phase.PREFILL) if t.op == "dense+rope")
    problem = task_problem(task, {**DIMS, "b": 99})  # dims the task does not use are dropped
    assert problem.dim_values == {"n": 5}
    assert pickle.loads(pickle.dumps(problem)) == problem and hash(problem)
    assert resolve_op(problem.op) is TASK_CHAIN
    chain = Chain.from_json(problem.attr_values["chain"])
    assert chain.to_json() == problem.attr_values["chain"]
    assert chain.op == "dense+rope" and chain.phase is Phase.PREFILL
    assert chain.calls[0].attr["bias"] is True  # qwen2's qkv bias is part of the chain


def test_inputs_follow_the_kernel_parameters() -> None:
    """Shapes and dtypes of the drawn inputs and of the reference match the PrimFunc's buffers."""
    for phase in Phase:
        for task in model_tasks(tiny("gemma"), phase, Quant.Q4):
            attrs = task_problem(task, DIMS).attr_values
            ins = TASK_CHAIN.make_inputs(DIMS, task.dtype, np.random.default_rng(0), **attrs)
            outs = TASK_CHAIN.reference(*ins, **attrs)
            func = task.func
            assert (len(func.inputs), len(func.outputs)) == (len(ins), len(outs)), task.name
            for buf, arr in zip(func.params, [*ins, *outs], strict=True):
                shape = tuple(buffer_elements((d,), DIMS) for d in buf.shape)
                assert arr.shape == shape, (task.name, buf.name)
            for buf, arr in zip(func.inputs, ins, strict=True):
                assert arr.dtype == storage_dtype(buf.dtype), (task.name, buf.name)


def test_every_preset_task_has_a_problem() -> None:
    for cfg in PRESETS.values():
        for phase in Phase:
            for quant in Quant:
                if quant is Quant.Q4 and cfg.hidden_size % 32:
                    continue
                for fusion in (True, False):
                    for task in model_tasks(cfg, phase, quant, fusion=fusion):
                        problem = task_problem(task, DIMS)
                        assert set(problem.dim_values) == set(task.symbolic)
                        assert Chain.from_json(problem.attr_values["chain"]).op in CHAIN_KINDS


def test_missing_dims_and_tasks_without_a_chain_are_refused() -> None:
    task = model_tasks(tiny("llama"), Phase.DECODE)[1]
    with pytest.raises(TaskProblemError, match="needs values for b"):
        task_problem(task, {"m": 7})
    with pytest.raises(TaskProblemError, match="without its op chain"):
        task_problem(replace(task, calls=()), DIMS)


def test_bucket_points_become_dims() -> None:
    prefill = {t.op: t for t in model_tasks(tiny("llama"), Phase.PREFILL,
                                             buckets={"n": (333, 8192)})}  # fmt: skip
    att = prefill["batch_matmul+softmax+batch_matmul"]
    assert task_buckets(att) == [{"n": 333, "m": 4096}, {"n": 8192, "m": 8192}]  # m >= n
    assert task_buckets(prefill["dense"]) == [{"n": 333}, {"n": 8192}]
    decode = {t.op: t for t in model_tasks(tiny("llama"), Phase.DECODE)}
    points = task_buckets(decode["batch_matmul+softmax+batch_matmul"])
    assert len(points) == len(DEFAULT_BUCKETS[Phase.DECODE]["b"])
    assert task_dims(decode["dense"], {"b": 16, "m": 4096}) == {"b": 16}
    with pytest.raises(TaskProblemError, match="bucket values for b"):
        task_dims(decode["dense"], {"m": 4096})


# ------------------------------------------------------------------ kernels against it


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("family", list(TINY))
def test_every_task_of_each_family_passes_its_check(runner, build_config, family, phase) -> None:
    tasks = model_tasks(tiny(family), phase)
    assert {"embedding", "dense+rope", "batch_matmul+softmax+batch_matmul", "rmsnorm",
            "dense+add", "dense"} <= {t.op for t in tasks}  # fmt: skip
    for task in tasks:
        result = check(runner, build_config, task)
        assert result.status is Status.OK, f"{family} {task.name}: {result.message}"


@pytest.mark.slow
@pytest.mark.parametrize(("family", "quant", "fusion"),
                         [("qwen2", Quant.Q4, True), ("llama", Quant.NONE, False),
                          ("qwen2", Quant.Q4, False)])  # fmt: skip
def test_q4_and_unfused_tasks_pass_their_check(runner, build_config, family, quant, fusion):
    for phase in Phase:
        for task in model_tasks(tiny(family), phase, quant, fusion=fusion):
            result = check(runner, build_config, task)
            assert result.status is Status.OK, f"{family} {task.name}: {result.message}"


def _with_call(task: Task, index: int, **changes) -> FusedCall:
    calls = list(task.calls)
    calls[index] = replace(calls[index], **changes)
    return FusedCall(tuple(calls))


@pytest.mark.slow
def test_a_kernel_with_one_op_changed_is_a_wrong_result(runner, build_config) -> None:
    # float32, whose tolerance tells silu from gelu (bf16's does not, on large gates)
    swiglu = next(t for t in model_tasks(tiny("mistral"), Phase.DECODE) if t.op == "dense+silu_mul")
    geglu = build_func(_with_call(swiglu, 1, op="gelu_mul"), Phase.DECODE)
    result = check(runner, build_config, swiglu, func=geglu)
    assert result.status is Status.WRONG_RESULT, result.message

    att = next(t for t in model_tasks(tiny("mistral"), Phase.PREFILL) if t.kind == "attention")
    unmasked = build_func(FusedCall(att.calls), Phase.DECODE)  # the causal mask left out
    result = check(runner, build_config, att, func=unmasked)
    assert result.status is Status.WRONG_RESULT, result.message

    gemma = next(t for t in model_tasks(tiny("gemma"), Phase.DECODE) if t.op == "embedding")
    unscaled = build_func(_with_call(gemma, 0, attrs=(("scale", 1.0),)), Phase.DECODE)
    result = check(runner, build_config, gemma, func=unscaled)
    assert result.status is Status.WRONG_RESULT, result.message


def test_a_changed_attribute_changes_the_reference() -> None:
    """The chain carries the attributes the reference depends on (GQA group, eps)."""
    task = next(t for t in model_tasks(tiny("llama"), Phase.DECODE) if t.kind == "attention")
    other = replace(task, calls=tuple(replace(c, attrs=(("group", 1), *[
        a for a in c.attrs if a[0] != "group"])) for c in task.calls))  # fmt: skip
    assert task_problem(task, DIMS) != task_problem(other, DIMS)


# ------------------------------------------------------------------ design spaces


def _all_tasks() -> list[Task]:
    """One task of each kind: op chain, bias or not, and the phase where it matters."""
    seen: dict[tuple, Task] = {}
    for family in TINY:
        for phase in Phase:
            for quant in Quant:
                for task in model_tasks(tiny(family), phase, quant):
                    masked = phase if task.kind == "attention" else None
                    seen.setdefault((task.op, task.calls[0].attr.get("bias"), masked), task)
    return list(seen.values())


# the block that reads the producer's output: inlined, so the epilogue runs in its stage (rope's
# output reads the anchor's rounded product, the block named for the anchor op, itself)
EPILOGUES = {"add": "residual_add", "silu_mul": "gate", "gelu_mul": "gate", "rope": ""}


# Attention keeps a row of scores/probabilities per (b, h, n) on chip; with a symbolic kv
# length m that row has no static size, and CUDA shared memory needs one (an online-softmax
# schedule would lift this). The CPU holds such rows in stack or heap buffers.
@pytest.mark.slow
@pytest.mark.parametrize("target", [Target.cpu(cores=2), Target.cuda("sm_90")], ids=str)
def test_every_task_kind_has_valid_sketches(target: Target) -> None:
    gen = SpaceGenerator(*rules_for(target.kind), with_default=False)
    ctx = SpaceContext(target)
    for task in _all_tasks():
        sketches = gen.generate(task.func, ctx)
        assert sketches, task.name
        for sketch in sketches:
            sch = sketch.trace.apply(task.func)
            ir.build_source(sch, target=target.kind.value)  # lowers and renders
        if target.is_cpu and len(task.calls) == 2:  # the epilogue is inlined on the CPU
            epilogue = EPILOGUES[task.calls[1].op] or task.calls[0].op
            assert all(f"auto_inline({epilogue})" in s.name for s in sketches), task.name


@pytest.mark.slow
def test_sampled_cpu_candidates_pass_the_check(runner, build_config) -> None:
    target = detect_cpu()
    ctx = SpaceContext(target)
    gen = SpaceGenerator(*rules_for(target.kind))
    rng = random.Random(7)
    for task in _all_tasks():
        if task.calls[0].op == "q4_dense":
            continue  # the same epilogues as dense; the q4 default schedules are checked above
        sampler = SpaceSampler(task.func, gen.generate(task.func, ctx), ctx,
                               default_postprocs(target.kind))  # fmt: skip
        candidates = sampler.sample_unique(rng, 2, set())
        assert candidates, task.name
        for cand in candidates:
            result = check(runner, build_config, task, trace=cand.trace_json)
            assert result.status is Status.OK, f"{task.name} {cand.trace_hash}: {result.message}"
