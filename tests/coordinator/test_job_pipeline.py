"""Pipelined measurement in model jobs: the next batch is built while the current one is timed.

Real local executor and gcc on the CPU target; stage times come from `JobOptions.on_batch`.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest
from job_problems import only

from tunefleet.coordinator.jobs import (
    JobConfig,
    JobInterrupted,
    JobOptions,
    resume_job,
    start_job,
)
from tunefleet.database import RecordStore
from tunefleet.tuner.cost_model import create_cost_model
from tunefleet.tuner.strategy import create_strategy
from tunefleet.tuner.task_tuner import BatchTimes, TaskTuner, workload_info
from tunefleet.tuner.tuning import build_workload
from tunefleet.workers import MeasureConfig, Problem

MODEL = str(Path(__file__).parent / "data" / "tiny_llama.json")
FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
# long enough runs (about 0.3 s a candidate) that a build has time to finish beside them
SLOW = MeasureConfig(guard_noise=False, repeats=5, warmup_ms=5.0, min_repeat_ms=50.0)
SETS = {"b": (1,), "m": (16,)}


def _job(tmp_path: Path, executor, pipeline: bool, budget: int, strategy="evolutionary", **kw):
    db = f"sqlite:///{tmp_path / f'jobs-{pipeline}.db'}"
    config = JobConfig(model=MODEL, phases=("decode",), sets=SETS, budget=budget,
                       trials_per_round=4, pipeline=pipeline, patience=0,
                       strategy=strategy)  # fmt: skip
    batches: list[BatchTimes] = []
    opts = JobOptions(workers=executor, model_dir=str(tmp_path / f"models-{pipeline}"),
                      problem_for=only("rmsnorm", "dense"), on_batch=batches.append,
                      **{"measure_config": FAST, **kw})  # fmt: skip
    return db, config, opts, batches


@pytest.mark.slow
def test_pipelined_and_unpipelined_jobs_record_every_task_alike(
    tmp_path: Path, executor, cpu
) -> None:
    kinds = {}
    for pipeline in (True, False):
        db, config, opts, batches = _job(tmp_path, executor, pipeline, budget=16)
        result = start_job(config, db, opts)
        assert result.status == "done" and result.trials == 16
        tuned = [t for t in result.tasks if t.trials]
        assert {t.name for t in tuned} == {"decode/input_norm", "decode/lm_head"}
        assert all(t.best_ms and t.default_ms for t in tuned), tuned
        assert sum(b.trials for b in batches) == 16 and max(b.trials for b in batches) == 4
        with RecordStore.open(db) as store:
            assert store.get_job(result.job_id).config["pipeline"] is pipeline
            records = [r for t in tuned for r in store.history(t.workload_key, cpu.fingerprint)]
        assert len(records) == 16 == len({(r.workload_key, r.trace_hash) for r in records})
        assert all(r.job_id == result.job_id for r in records)
        for r in records:  # every ok record was checked against the reference and timed
            assert r.status != "ok" or (r.median_ms and len(r.timings_ms) == FAST.repeats)
        kinds[pipeline] = {(r.status, r.space_version, bool(r.timings_ms)) for r in records}
    assert kinds[True] == kinds[False] == {("ok", records[0].space_version, True)}


@pytest.mark.slow
def test_the_next_batch_is_built_while_the_current_one_is_timed(tmp_path: Path, executor) -> None:
    seen = {}
    for pipeline in (True, False):
        db, config, opts, batches = _job(tmp_path, executor, pipeline, budget=16,
                                         strategy="random", measure_config=SLOW)  # fmt: skip
        assert start_job(config, db, opts).trials == 16
        pairs = list(itertools.pairwise(batches))
        assert len(pairs) == 3
        seen[pipeline] = [nxt.built_while_timing(cur) for cur, nxt in pairs]
        if not pipeline:  # one batch at a time: proposed only once the last one is timed
            assert all(nxt.proposed_at >= cur.runs_done for cur, nxt in pairs)
    assert not any(seen[False])
    assert any(seen[True]), "no build of a next batch finished while a batch was timed"


@pytest.mark.slow
def test_a_stop_keeps_the_finished_batch_drops_the_one_building_and_resume_completes(
    tmp_path: Path, executor, cpu
) -> None:
    db, config, _, batches = _job(tmp_path, executor, True, budget=16)

    def stop_after_first_round(res) -> None:
        if res.trials == 4:
            raise KeyboardInterrupt  # the second batch is being built now

    opts = JobOptions(workers=executor, model_dir=str(tmp_path / "models"), measure_config=FAST,
                      problem_for=only("rmsnorm", "dense"), on_batch=batches.append,
                      on_progress=stop_after_first_round)  # fmt: skip
    with pytest.raises(JobInterrupted) as stopped:
        start_job(config, db, opts)
    assert stopped.value.trials == 4
    job_id = stopped.value.job_id
    with RecordStore.open(db) as store:
        assert store.get_job(job_id).status == "cancelled"
        assert sum(store.job_trial_counts(job_id).values()) == 4
    again = JobOptions(workers=executor, model_dir=str(tmp_path / "models"), measure_config=FAST,
                       problem_for=only("rmsnorm", "dense"))  # fmt: skip
    result = resume_job(job_id, db, again)
    assert result.status == "done" and result.trials == 16
    with RecordStore.open(db) as store:
        for t in result.tasks:
            hashes = [r.trace_hash for r in store.history(t.workload_key, cpu.fingerprint)]
            assert len(hashes) == len(set(hashes)) == t.trials, "nothing measured twice"


def test_after_a_stop_only_results_that_came_back_before_it_are_committed(
    tmp_path: Path, executor, cpu
) -> None:
    shape = {"m": 2, "n": 64}
    func = build_workload("rmsnorm", shape, "float32", {})
    problem = Problem.create("rmsnorm", shape, "float32")
    with RecordStore.open(f"sqlite:///{tmp_path / 'stop.db'}") as store:
        tuner = TaskTuner(
            func, problem, cpu, store, workload=workload_info(func, "rmsnorm", shape, "float32"),
            strategy=create_strategy("random"), cost_model=create_cost_model("xgb"),
            measure_config=FAST,
        )  # fmt: skip
        before = time.monotonic()
        first = tuner.start_round(executor, 3)
        second = tuner.start_round(executor, 3)  # proposed while the first is in flight
        hashes = [{c.trace_hash for c in r.batch} for r in (first, second)]
        assert len(hashes[0]) == len(hashes[1]) == 3 and not hashes[0] & hashes[1]
        assert tuner.in_flight == hashes[0] | hashes[1]
        first.start_runs(executor)
        first.collect(lambda i, r: None)
        assert tuner.abort_round(first, before) == 0, "all came back after the stop"
        second.start_runs(executor)
        second.collect(lambda i, r: None)
        assert tuner.abort_round(second, time.monotonic()) == 3
        assert tuner.abort_round(second, time.monotonic()) == 0, "a closed round commits once"
        assert store.measured_hashes(tuner.key, cpu.fingerprint) == hashes[1]
        assert not tuner.in_flight


@pytest.mark.ray
@pytest.mark.slow
def test_a_pipelined_job_builds_as_ray_tasks_and_times_in_runner_actors(
    tmp_path: Path, cpu
) -> None:
    from tunefleet.workers import BuildConfig, create_executor

    config = BuildConfig(cache_dir=str(tmp_path / "kernels"))
    with create_executor("ray", config, num_cpus=2) as ray_executor:
        db, job, opts, batches = _job(tmp_path, ray_executor, True, budget=8, strategy="random")
        result = start_job(job, db, opts)
    assert result.status == "done" and result.trials == 8
    assert [b.trials for b in batches] == [4, 4]
    with RecordStore.open(db) as store:
        assert sum(store.job_trial_counts(result.job_id).values()) == 8
        for t in result.tasks:
            if t.trials:
                assert store.best(t.workload_key, cpu.fingerprint, 1)[0].median_ms == t.best_ms
