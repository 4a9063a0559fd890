"""Noisy trials: stored with their evidence, never best, measured again; records keep how
they were measured (spread, attempts) through exports, and old exports still import."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from records_factory import CPU, record, trace, workload

from tunefleet.database import RecordStore


def _noisy(seed: int, timings: list[float]):
    w = workload(0)
    base = record(w, CPU, seed, None, status="noisy")
    return dataclasses.replace(
        base,
        timings_ms=tuple(timings),
        error_msg="noisy in 4 attempts: only 1 of 10 repeats clean",
        spread=1.4,
        attempts=4,
    )


def test_a_noisy_record_is_never_best_and_its_trace_is_measured_again(db_url: str) -> None:
    w = workload(0)
    with RecordStore.open(db_url) as store:
        store.ensure_target(CPU)
        store.ensure_workload(w)
        ok = dataclasses.replace(record(w, CPU, 1, 0.58), spread=0.03, attempts=2)
        # trace 2 was only ever timed under load; its raw repeats look faster than trace 1's
        store.commit([ok, _noisy(2, [0.19, 8.19, 4.2])])
        best = store.best(w.key, CPU.fingerprint, k=5)
        assert [(r.trace_hash, r.spread, r.attempts) for r in best] == [(trace(1)[1], 0.03, 2)]
        assert store.measured_hashes(w.key, CPU.fingerprint) == {trace(1)[1]}
        assert not store.has_measured(w.key, CPU.fingerprint, trace(2)[1])
        (kept,) = [r for r in store.history(w.key, CPU.fingerprint) if r.status == "noisy"]
        assert kept.median_ms is None and kept.timings_ms == (0.19, 8.19, 4.2)
        assert (kept.spread, kept.attempts) == (1.4, 4)
        # measured again later, quietly: now it counts
        store.commit([dataclasses.replace(record(w, CPU, 2, 0.2), spread=0.02, attempts=1)])
        assert store.best(w.key, CPU.fingerprint)[0].trace_hash == trace(2)[1]
        assert store.has_measured(w.key, CPU.fingerprint, trace(2)[1])


def test_spread_and_attempts_travel_and_are_left_out_when_unknown(
    db_url: str, tmp_path: Path
) -> None:
    w = workload(0)
    with RecordStore.open(db_url) as store:
        store.ensure_target(CPU)
        store.ensure_workload(w)
        measured = dataclasses.replace(record(w, CPU, 1, 0.5), spread=0.05, attempts=1)
        store.commit([measured, record(w, CPU, 3, 0.7), _noisy(2, [0.3, 4.3])])
        store.export_jsonl(tmp_path / "out.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    records = {r["trace_hash"]: r for r in lines if r.get("type") == "record"}
    assert (records[trace(1)[1]]["spread"], records[trace(1)[1]]["attempts"]) == (0.05, 1)
    assert "spread" not in records[trace(3)[1]] and "attempts" not in records[trace(3)[1]]
    assert records[trace(2)[1]]["status"] == "noisy"
    with RecordStore.open(f"sqlite:///{tmp_path / 'copy.db'}") as copy:
        assert copy.import_jsonl(tmp_path / "out.jsonl").records_added == 3
        best = copy.best(w.key, CPU.fingerprint, k=5)
        assert [(r.median_ms, r.spread, r.attempts) for r in best] == [
            (0.5, 0.05, 1),
            (0.7, None, None),
        ]
