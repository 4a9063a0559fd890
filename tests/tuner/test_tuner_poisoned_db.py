"""A record whose trace does not replay, slipped into the database before imports were
checked, poisons best() for everyone: `tunefleet db verify` flags it and tune reports a real
best again, whose trace builds."""

from __future__ import annotations

from pathlib import Path

from tunefleet.coordinator.cli import main
from tunefleet.database import NewRecord, RecordStore
from tunefleet.ir import ops
from tunefleet.ir.trace import Trace
from tunefleet.tuner import tune
from tunefleet.workers import MeasureConfig

FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
SHAPE = {"m": 4, "n": 32, "k": 64}


def _run(tmp_path: Path, executor, db: str, trials: int):
    return tune(
        "dense", SHAPE, trials=trials, db_url=db, workers=executor, batch_size=4,
        model_dir=str(tmp_path / "models"), measure_config=FAST, measure_default=False,
        strategy="random", seed=3,
    )  # fmt: skip


def test_verify_flags_a_poisoned_record_and_tune_reports_a_real_best(
    tmp_path: Path, executor, cpu, capsys
) -> None:
    db = f"sqlite:///{tmp_path / 'records.db'}"
    first = _run(tmp_path, executor, db, 4)
    assert first.best_ms is not None and first.best_trace_json is not None
    text = first.best_trace_json.replace('"kind": "', '"kind": "no_such_', 1)  # any best
    assert text != first.best_trace_json
    with RecordStore.open(db) as store:
        store.commit([NewRecord(first.workload_key, cpu.fingerprint, text, "poisoned", "ok",
                                timings_ms=[1e-6] * 3, median_ms=1e-6)])  # fmt: skip
    assert _run(tmp_path, executor, db, 0).best_ms == 1e-6  # the reported bug (beats any kernel)

    assert main(["db", "verify", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "checked 5 records: 1 invalid (1 newly flagged" in out, out

    again = _run(tmp_path, executor, db, 0)
    assert again.best_ms == first.best_ms and again.best_trace_json == first.best_trace_json
    assert again.total_trials == 5  # the flagged trace stays measured, never retried
    func = ops.get_op("dense").build(SHAPE, "float32")
    Trace.from_json(again.best_trace_json).apply(func)  # the best builds
