"""An exact kernel (a record whose trace tiles the row dim at its bucket's constant) serves
the smaller sizes of its bucket by running the point's rows: measured for real, committed
through the record store, compiled, dispatched with padding, and checked against the
reference."""

from __future__ import annotations

import random

import numpy as np
import pytest
from runtime_models import BUCKETS, tiny
from test_runtime_models import generate_and_compare

from tunefleet.coordinator.graph import PINNED, Phase
from tunefleet.coordinator.job_plan import specialize
from tunefleet.coordinator.task_problems import task_problem
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.database import NewRecord, RecordStore
from tunefleet.ir import structural_hash
from tunefleet.runtime import CompileOptions, compile_model, load_model
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for
from tunefleet.tuner.task_tuner import target_info, workload_info
from tunefleet.workers.builder import BuildInput, LoweringError, build, lower
from tunefleet.workers.results import MeasureConfig, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import detect_cpu

FAST = MeasureConfig(guard_noise=False, warmup_ms=0.5, repeats=1, min_repeat_ms=0.1, timeout_s=20)


def commit_exact_record(store: RecordStore, build_config, family: str, call: str) -> int:
    """Measure a sampled candidate of decode `call` at b=4 whose trace pins b; commit it."""
    target = detect_cpu()
    task = next(t for t in model_tasks(tiny(family), Phase.DECODE, buckets=BUCKETS)
                if call in t.names)  # fmt: skip
    dims = {**PINNED[Phase.DECODE], "b": 4}
    func = specialize(task.func, dims)
    ctx = SpaceContext(target)
    sampler = SpaceSampler(func, SpaceGenerator(*rules_for(target.kind)).generate(func, ctx), ctx,
                           default_postprocs(target.kind))  # fmt: skip
    with Runner(RunnerConfig(device="cpu", cache_dir=build_config.cache_dir)) as runner:
        for cand in sampler.sample_unique(random.Random(0), 12, set()):
            try:
                lower(BuildInput(target, workload=task.func, trace=cand.trace_json))
                continue  # replays on the symbolic func: not an exact kernel
            except LoweringError:
                pass
            built = build(BuildInput(target, workload=func, trace=cand.trace_json), build_config)
            assert built.status is Status.OK, built.message
            result = runner.run(RunInput(built.artifact, task_problem(task, dims), FAST))
            assert result.status is Status.OK, result.message
            store.ensure_target(target_info(target))
            shape = {k: v.evaluate(dims) for k, v in task.shape}
            store.ensure_workload(workload_info(func, task.op, shape, task.dtype))
            record = NewRecord(structural_hash(func), target.fingerprint, cand.trace_json,
                               cand.trace_hash, "ok", result.timings_ms,
                               result.median_ms)  # fmt: skip
            return store.commit([record])[0]
    pytest.fail(f"no sampled candidate of {call} pins b")


@pytest.mark.slow
def test_an_exact_kernel_pads_smaller_batches_of_its_bucket(tmp_path, build_config,
                                                            family_weights) -> None:  # fmt: skip
    with RecordStore.open(f"sqlite:///{tmp_path / 'records.db'}") as store:
        record_id = commit_exact_record(store, build_config, "llama", "lm_head")
        out = tmp_path / "model"
        manifest = compile_model(CompileOptions(tiny("llama"), detect_cpu(), str(out),
                                                build_config, store, buckets=BUCKETS))  # fmt: skip
    lm_head = manifest.task_for("decode", "lm_head")
    kernel = next(k for k in lm_head.kernels if k.record_id is not None)
    assert kernel.record_id == record_id and kernel.exact and kernel.pad == ("b",)
    assert kernel.bucket == {"b": 4} and kernel.ranges == {"b": (2, 0)}  # the last bucket

    model = load_model(out, family_weights["llama"], threads=1)
    assert model.choose(lm_head, {"b": 3}) == (kernel, {"b": 4})  # 3 rows run as 4
    assert model.choose(lm_head, {"b": 4}) == (kernel, {"b": 4})
    assert model.choose(lm_head, {"b": 1})[0].record_id is None  # bucket 1: the default
    assert model.choose(lm_head, {"b": 9})[0] == lm_head.fallback  # above the point
    session = model.session(batch=3, max_len=12, max_prompt=4)
    assert session.plan.decode_logits.shape[0] == 4  # room for the padded rows
    for batch in (2, 3, 4):
        err = generate_and_compare(model, family_weights["llama"], batch, 4, steps=3)
        assert err <= 1e-3, batch
    assert np.isfinite(session.plan.decode_logits).all()
