"""Target identity in tuning: records land under the target that measured them, spaces are
built from the target's capabilities, and space versions follow the rule set."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tunefleet.database import NewRecord, RecordStore, TargetInfo, WorkloadInfo
from tunefleet.ir import ops, structural_hash
from tunefleet.tuner import tune
from tunefleet.tuner.candidates import SpaceSampler
from tunefleet.tuner.postproc import default_postprocs
from tunefleet.tuner.rule_multi_level_tiling import MultiLevelTiling
from tunefleet.tuner.space import SpaceContext, SpaceGenerator, rules_for, space_version
from tunefleet.tuner.tuning import on_target
from tunefleet.workers import MeasureConfig, MeasureResult, Status, Target

FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
SHAPE = {"m": 4, "n": 32, "k": 64}


def test_a_result_from_another_device_becomes_a_failed_trial() -> None:
    ok = MeasureResult(Status.OK, median_ms=1.0, timings_ms=(1.0,), target_fingerprint="aaaa")
    assert on_target(ok, "aaaa") is ok
    refused = on_target(ok, "bbbb")
    assert refused.status is Status.RUN_ERROR and refused.median_ms is None
    assert refused.message == "measured on aaaa but the task targets bbbb"
    unnamed = on_target(MeasureResult(Status.OK, median_ms=1.0, timings_ms=(1.0,)), "bbbb")
    assert unnamed.status is Status.RUN_ERROR and "unknown device" in unnamed.message
    never_ran = MeasureResult(Status.BUILD_ERROR, message="gcc failed")
    assert on_target(never_ran, "bbbb") is never_ran


def test_the_space_context_reads_the_targets_capabilities() -> None:
    ctx = SpaceContext(Target.cpu(cores=8, vector_bytes=32))
    assert ctx.is_cpu and ctx.cores == 8 and ctx.vector_bytes == 32
    gpu = SpaceContext(Target.cuda("sm_90"))
    assert gpu.is_gpu and gpu.arch == "sm_90" and gpu.kind.value == "cuda"


def test_space_versions_follow_the_rule_set(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, cuda = space_version("cpu"), space_version("cuda")
    assert cpu.startswith("cpu-") and cuda.startswith("cuda-") and cpu[4:] != cuda[5:]
    assert space_version("cpu") == cpu
    monkeypatch.setattr(MultiLevelTiling, "version", MultiLevelTiling.version + 1)
    assert space_version("cpu") != cpu
    assert space_version("cuda") == cuda  # not one of the CUDA rules


def test_tuning_for_a_target_this_machine_is_not_refuses_every_trial(
    tmp_path: Path, executor, cpu
) -> None:
    elsewhere = Target.cpu(cores=2, device="a CPU of another node")
    db = f"sqlite:///{tmp_path / 'records.db'}"
    result = tune("dense", SHAPE, target=elsewhere, trials=3, db_url=db, workers=executor,
                  batch_size=3, model_dir=str(tmp_path / "m"), measure_config=FAST,
                  strategy="random")  # fmt: skip
    assert result.trials == 3 and result.failures == 3
    assert result.best_ms is None and result.default_ms is None
    key = structural_hash(ops.get_op("dense").build(SHAPE, "float32"))
    with RecordStore.open(db) as store:
        history = store.history(key, elsewhere.fingerprint)
        assert store.history(key, cpu.fingerprint) == []
    expected = f"measured on {cpu.fingerprint} but the task targets {elsewhere.fingerprint}"
    assert [(r.status, r.error_msg) for r in history] == [("run_error", expected)] * 3
    assert {r.space_version for r in history} == {space_version("cpu")}


def _sampled_trace_json(op: str, shape: dict[str, int], seed: int) -> tuple[str, str]:
    func = ops.get_op(op).build(shape, "float32")
    ctx = SpaceContext(Target.cpu())
    sampler = SpaceSampler(
        func, SpaceGenerator(*rules_for("cpu")).generate(func, ctx), ctx, default_postprocs("cpu")
    )
    cand = sampler.sample_unique(random.Random(seed), 1, set())[0]
    return cand.trace_json, cand.trace_hash


def test_records_of_an_older_space_count_but_are_rechecked(tmp_path: Path, executor, cpu) -> None:
    func = ops.get_op("dense").build(SHAPE, "float32")
    key = structural_hash(func)
    db = f"sqlite:///{tmp_path / 'records.db'}"
    replays = _sampled_trace_json("dense", SHAPE, 1)
    foreign = _sampled_trace_json("softmax", {"m": 4, "n": 32}, 2)  # names no dense block
    current = _sampled_trace_json("dense", SHAPE, 3)
    foreign_now = _sampled_trace_json("softmax", {"m": 4, "n": 32}, 4)
    info = cpu.to_info()
    with RecordStore.open(db) as store:
        store.ensure_target(TargetInfo(**info))
        store.ensure_workload(WorkloadInfo(key, "dense", SHAPE, "float32", func.to_json()))
        rows = [
            (replays, "cpu-old", 1.0),
            (foreign, "cpu-old", 0.5),
            (current, None, 2.0),
            (foreign_now, None, 3.0),
        ]
        store.commit([
            NewRecord(key, cpu.fingerprint, trace, thash, "ok", (ms,), ms,
                      space_version=version or space_version("cpu"))
            for (trace, thash), version, ms in rows
        ])  # fmt: skip
    result = tune("dense", SHAPE, trials=0, db_url=db, workers=executor, measure_default=False,
                  model_dir=str(tmp_path / "m"))  # fmt: skip
    # only the older space's record that no longer replays is dropped as a seed; a record of
    # the current space is trusted as it is
    assert result.stale_records == 1
    assert result.total_trials == 4  # every record still counts as measured
    assert result.to_json_dict()["stale_records"] == 1
