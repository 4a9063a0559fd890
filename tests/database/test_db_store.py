"""The record store on SQLite and PostgreSQL: round trips, best-of-k, target separation,
de-duplication, history, stats, prune, jobs and tasks."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from records_factory import A100, CPU, H100, random_batch, record, workload

from tunefleet.database import (
    InvalidRecordError,
    NewRecord,
    NewTask,
    RecordStore,
    UnknownKeyError,
)


@pytest.fixture
def store(db_url: str):
    with RecordStore.open(db_url) as opened:
        yield opened


def test_commit_and_read_back_every_field(store: RecordStore) -> None:
    w = workload(3)
    assert store.ensure_target(H100) == store.ensure_target(H100)
    store.ensure_workload(w)
    new = [record(w, H100, 1, 0.125), record(w, H100, 2, None, "build_error")]
    before = datetime.now(UTC) - timedelta(seconds=1)
    ids = store.commit(new)
    assert len(ids) == 2 and ids[0] < ids[1]
    history = store.history(w.key, H100.fingerprint)
    assert [r.id for r in history] == ids
    for stored, sent in zip(history, new, strict=True):
        assert stored.workload_key == sent.workload_key
        assert stored.target_fingerprint == sent.target_fingerprint
        assert stored.trace_json == sent.trace_json
        assert stored.trace_hash == sent.trace_hash
        assert stored.status == sent.status
        assert stored.timings_ms == sent.timings_ms
        assert stored.median_ms == sent.median_ms
        assert stored.error_msg == sent.error_msg
        assert stored.space_version == "dense-v1"
        assert stored.created_at.tzinfo is not None
        assert before <= stored.created_at <= datetime.now(UTC) + timedelta(seconds=1)
        assert len(stored.uid) == 32
    assert store.get_target(H100.fingerprint) == H100
    assert store.get_workload(w.key) == w


def test_best_is_ordered_by_median_and_ignores_failures(store: RecordStore) -> None:
    w = workload(1)
    store.ensure_target(H100)
    store.ensure_workload(w)
    batch = random_batch(w, H100, 300, seed=7)
    store.commit(batch)
    ok = sorted(r.median_ms for r in batch if r.status == "ok")
    for k in (1, 5, 1000):
        best = store.best(w.key, H100.fingerprint, k)
        assert [r.median_ms for r in best] == ok[:k]
        assert all(r.status == "ok" for r in best)
    with pytest.raises(InvalidRecordError):
        store.best(w.key, H100.fingerprint, 0)


def test_get_record_reads_one_record_by_id_with_its_workload_and_target(
    store: RecordStore,
) -> None:
    w = workload(4)
    store.ensure_target(H100)
    store.ensure_workload(w)
    ok_id, failed_id = store.commit(
        [record(w, H100, 1, 0.25), record(w, H100, 2, None, "run_error")]
    )
    got = store.get_record(ok_id)
    assert got == store.best(w.key, H100.fingerprint)[0]
    assert (got.workload_key, got.target_fingerprint) == (w.key, H100.fingerprint)
    assert got.median_ms == 0.25
    assert store.get_record(ok_id, sound=True) == got
    assert store.get_record(failed_id).status == "run_error"
    assert store.get_record(failed_id, sound=True) is None  # best() would never answer with it
    assert store.get_record(failed_id + 1) is None


def test_ties_are_broken_by_commit_order(store: RecordStore) -> None:
    w = workload(1)
    store.ensure_target(H100)
    store.ensure_workload(w)
    ids = store.commit([record(w, H100, s, 1.0) for s in range(4)])
    assert [r.id for r in store.best(w.key, H100.fingerprint, 3)] == ids[:3]


def test_a_record_from_one_target_never_answers_for_another(store: RecordStore) -> None:
    w = workload(2)
    for target in (H100, A100, CPU):
        store.ensure_target(target)
    store.ensure_workload(w)
    store.commit([record(w, A100, 1, 0.5), record(w, H100, 2, 0.9)])
    assert [r.median_ms for r in store.best(w.key, H100.fingerprint, 5)] == [0.9]
    assert [r.median_ms for r in store.best(w.key, A100.fingerprint, 5)] == [0.5]
    assert store.best(w.key, CPU.fingerprint) == []
    assert store.best(w.key, "no-such-target") == []
    assert store.best("no-such-workload", H100.fingerprint) == []
    _, h1 = record(w, A100, 1, 0.5).trace_json, record(w, A100, 1, 0.5).trace_hash
    assert store.has_measured(w.key, A100.fingerprint, h1)
    assert not store.has_measured(w.key, H100.fingerprint, h1)


def test_deduplication_sees_failures_too(store: RecordStore) -> None:
    w = workload(4)
    store.ensure_target(CPU)
    store.ensure_workload(w)
    batch = random_batch(w, CPU, 50, seed=3)
    store.commit(batch)
    assert store.measured_hashes(w.key, CPU.fingerprint) == {r.trace_hash for r in batch}
    failed = next(r for r in batch if r.status != "ok")
    assert store.has_measured(w.key, CPU.fingerprint, failed.trace_hash)
    assert not store.has_measured(w.key, CPU.fingerprint, "0" * 64)
    assert store.measured_hashes(w.key, "unknown") == set()


def test_history_keeps_every_trial_in_order_and_limits_to_the_latest(store: RecordStore) -> None:
    w = workload(5)
    store.ensure_target(CPU)
    store.ensure_workload(w)
    first = store.commit(random_batch(w, CPU, 10, seed=1))
    second = store.commit(random_batch(w, CPU, 10, seed=2))
    assert [r.id for r in store.history(w.key, CPU.fingerprint)] == first + second
    assert [r.id for r in store.history(w.key, CPU.fingerprint, limit=4)] == second[-4:]


def test_commit_is_all_or_nothing_and_names_unknown_keys(store: RecordStore) -> None:
    w = workload(6)
    store.ensure_target(CPU)
    store.ensure_workload(w)
    stray = record(workload(7), CPU, 2, 1.0)
    with pytest.raises(UnknownKeyError, match="ensure_workload"):
        store.commit([record(w, CPU, 1, 1.0), stray])
    with pytest.raises(UnknownKeyError, match="ensure_target"):
        store.commit([record(w, A100, 1, 1.0)])
    assert store.history(w.key, CPU.fingerprint) == []
    assert store.commit([]) == []


def test_new_record_rejects_impossible_measurements() -> None:
    w = workload(1)
    with pytest.raises(InvalidRecordError, match="status"):
        record(w, CPU, 1, 1.0, status="fast")
    with pytest.raises(InvalidRecordError, match="median_ms"):
        record(w, CPU, 1, None, status="ok")
    with pytest.raises(InvalidRecordError, match="median_ms"):
        NewRecord(w.key, CPU.fingerprint, "[]", "h", "ok", [1.0], math.nan)
    with pytest.raises(InvalidRecordError, match="timings_ms"):
        NewRecord(w.key, CPU.fingerprint, "[]", "h", "ok", [math.inf], 1.0)


def test_stats_and_summaries_count_by_status_and_target(store: RecordStore) -> None:
    w1, w2 = workload(1), workload(2)
    for t in (H100, CPU):
        store.ensure_target(t)
    for w in (w1, w2):
        store.ensure_workload(w)
    store.commit(
        [
            record(w1, H100, 1, 2.0),
            record(w1, H100, 2, 1.0),
            record(w1, H100, 3, None, "timeout"),
            record(w2, CPU, 4, None, "wrong_result"),
        ]
    )
    stats = store.stats()
    assert (stats.targets, stats.workloads, stats.records) == (2, 2, 4)
    assert dict(stats.by_status) == {"ok": 2, "timeout": 1, "wrong_result": 1}
    assert dict(stats.records_per_target) == {H100.fingerprint: 3, CPU.fingerprint: 1}
    assert stats.revision == store.revision()
    assert "***" in stats.url or "@" not in stats.url
    pairs = {(p.workload_key, p.target_fingerprint): p for p in store.summaries()}
    assert (pairs[w1.key, H100.fingerprint].records, pairs[w1.key, H100.fingerprint].best_ms) == (
        3,
        1.0,
    )
    assert pairs[w2.key, CPU.fingerprint].ok_records == 0
    assert pairs[w2.key, CPU.fingerprint].best_ms is None
    assert [p.target_fingerprint for p in store.summaries(CPU.fingerprint)] == [CPU.fingerprint]


def test_prune_keeps_the_best_k_of_each_pair(store: RecordStore) -> None:
    workloads = [workload(i) for i in range(3)]
    for t in (H100, A100):
        store.ensure_target(t)
    expected = {}
    for i, w in enumerate(workloads):
        store.ensure_workload(w)
        for j, t in enumerate((H100, A100)):
            batch = random_batch(w, t, 40, seed=10 * i + j)
            store.commit(batch)
            expected[w.key, t.fingerprint] = sorted(r.median_ms for r in batch if r.median_ms)[:3]
    total = store.stats().records
    would = store.prune(3, dry_run=True)
    assert store.stats().records == total
    assert store.prune(3) == would == total - 3 * len(expected)
    for (key, fingerprint), medians in expected.items():
        assert [r.median_ms for r in store.history(key, fingerprint)] != []
        assert sorted(r.median_ms for r in store.history(key, fingerprint)) == medians
    assert store.prune(3) == 0


def test_jobs_and_tasks_track_progress(store: RecordStore) -> None:
    w1, w2 = workload(1), workload(2)
    store.ensure_target(H100)
    store.ensure_workload(w1)
    store.ensure_workload(w2)
    job = store.create_job(
        "llama3-8b decode",
        "meta-llama/Meta-Llama-3-8B",
        H100.fingerprint,
        2000,
        {"buckets": [1, 16]},
    )
    tasks = store.add_tasks(job, [NewTask(w1.key, 32.0, 1000), NewTask(w2.key, 1.0, 1000)])
    info = store.update_task_progress(tasks[0], trials_done=64, best_ms=0.031, status="running")
    assert (info.trials_done, info.best_ms, info.status, info.workload_key) == (
        64,
        0.031,
        "running",
        w1.key,
    )
    info = store.update_task_progress(tasks[0], trials_done=128)
    assert (info.trials_done, info.best_ms) == (128, 0.031)
    store.set_job_status(job, "running")
    [listed] = store.list_jobs()
    assert (listed.id, listed.status, listed.target_fingerprint, listed.budget) == (
        job,
        "running",
        H100.fingerprint,
        2000,
    )
    assert listed.config == {"buckets": [1, 16]}
    assert [t.weight for t in store.list_tasks(job)] == [32.0, 1.0]
    with pytest.raises(UnknownKeyError):
        store.update_task_progress(99_999, trials_done=1)
    with pytest.raises(UnknownKeyError):
        store.add_tasks(job, [NewTask("missing")])
    with pytest.raises(UnknownKeyError):
        store.create_job("x", "m", "no-target", 1)
    with pytest.raises(InvalidRecordError):
        store.set_job_status(job, "exploded")
    ids = store.commit(
        [NewRecord(w1.key, H100.fingerprint, "[]", "h", "ok", [1.0], 1.0, job_id=job)]
    )
    assert store.history(w1.key, H100.fingerprint)[0].job_id == job
    assert ids


def test_boundary_records_are_frozen_and_hashable() -> None:
    w = workload(1)
    assert {H100: 1, w: 2}[H100] == 1
    assert H100 != A100 and w != workload(2)
    with pytest.raises(AttributeError):
        H100.fingerprint = "other"  # type: ignore[misc]
