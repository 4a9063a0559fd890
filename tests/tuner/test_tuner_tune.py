"""The whole loop on the CPU target with tiny budgets: search, records, model, continuation."""

from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunefleet.database import RecordStore
from tunefleet.ir import ops, structural_hash
from tunefleet.tuner import TuneError, tune
from tunefleet.tuner.cli import tune as tune_cli
from tunefleet.tuner.cost_model import model_path
from tunefleet.tuner.model_xgb import XGBModel
from tunefleet.workers import MeasureConfig

# the loop is under test, not the timing: with the noise guard a busy machine would record
# noisy trials, which are measured again (tests/tuner/test_tuner_noisy.py)
FAST = MeasureConfig(repeats=3, warmup_ms=0.5, min_repeat_ms=0.3, guard_noise=False)
SHAPE = {"m": 4, "n": 32, "k": 64}


def _run(tmp_path: Path, executor, db: str, trials: int, **kw):
    return tune(
        "dense", SHAPE, trials=trials, db_url=db, workers=executor, batch_size=4,
        model_dir=str(tmp_path / "models"), measure_config=FAST, measure_default=False, **kw,
    )  # fmt: skip


def test_tune_records_every_trial_and_continues(tmp_path: Path, executor, cpu) -> None:
    db = f"sqlite:///{tmp_path / 'records.db'}"
    first = _run(tmp_path, executor, db, 6, strategy="random", seed=1)
    assert first.trials == 6 and first.total_trials == 6
    key = structural_hash(ops.get_op("dense").build(SHAPE, "float32"))
    assert first.workload_key == key
    with RecordStore.open(db) as store:
        hist = store.history(key, cpu.fingerprint)
        assert len(hist) == 6
        ok = [r.median_ms for r in hist if r.status == "ok"]
        assert first.best_ms == min(ok)
    second = _run(tmp_path, executor, db, 5, strategy="evolutionary", seed=1)
    assert second.trials == 5 and second.total_trials == 11
    assert second.best_ms is not None and second.best_ms <= first.best_ms
    with RecordStore.open(db) as store:
        hashes = [r.trace_hash for r in store.history(key, cpu.fingerprint)]
    assert len(hashes) == len(set(hashes)) == 11, "no trace is measured twice"
    assert first.gflops and first.gbps


def test_same_seed_proposes_the_same_first_batch(tmp_path: Path, executor, cpu) -> None:
    key = structural_hash(ops.get_op("dense").build(SHAPE, "float32"))
    batches = []
    for run in ("a", "b", "c"):
        db = f"sqlite:///{tmp_path / (run + '.db')}"
        _run(tmp_path / run, executor, db, 4, strategy="evolutionary", seed=0 if run != "c" else 5)
        with RecordStore.open(db) as store:
            batches.append([r.trace_hash for r in store.history(key, cpu.fingerprint)])
    assert batches[0] == batches[1]
    assert batches[0] != batches[2]


def test_cost_model_is_saved_per_target_and_retrained(tmp_path: Path, executor, cpu) -> None:
    db = f"sqlite:///{tmp_path / 'm.db'}"
    _run(tmp_path, executor, db, 12, strategy="random", seed=2)
    path = model_path(tmp_path / "models", cpu.fingerprint)
    assert path.exists()
    model = XGBModel(min_samples=4)
    model.load(path)
    assert len(model.samples) == 12
    assert model.trained


def test_bad_requests_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(TuneError, match="unknown op"):
        tune("nope", {"m": 1}, trials=1, db_url=str(tmp_path / "x.db"))
    with pytest.raises(TuneError, match="missing"):
        tune("dense", {"m": 1}, trials=1, db_url=str(tmp_path / "x.db"))


def test_cli_json_and_one_line_errors(tmp_path: Path, cpu) -> None:
    runner = CliRunner()
    db = str(tmp_path / "cli.db")
    args = ["add", "--shape", "m=8,n=64", "--trials", "3", "--db", db, "--batch-size", "3"]
    env = {"TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    res = runner.invoke(tune_cli, [*args, "--json"], env=env)
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert {"workload_key", "target", "trials", "best_ms", "default_ms", "gflops", "gbps",
            "failures"} <= set(data)  # fmt: skip
    assert data["trials"] == 3 and data["best_ms"] > 0 and data["default_ms"] > 0
    res = runner.invoke(tune_cli, [*args[:-2], "--batch-size", "2", "--trials", "2"], env=env)
    assert res.exit_code == 0, res.output
    # the run continues from the first one's records; a trial timed under load (a busy
    # machine) is recorded noisy, not counted as measured, and the summary says so
    noisy = re.search(r"(\d+) of 2 trials timed under load", res.output)
    measured = data["total_trials"] + 2 - (int(noisy.group(1)) if noisy else 0)
    assert "default schedule" in res.output and f"2 this run, {measured} recorded" in res.output
    res = runner.invoke(tune_cli, ["add", "--shape", "m=8", "--db", db], env=env)
    assert res.exit_code == 2 and "missing n" in res.output
    res = runner.invoke(tune_cli, ["add", "--shape", "m=x", "--db", db], env=env)
    assert res.exit_code == 2 and "--shape" in res.output


@pytest.mark.postgres
def test_continuation_on_postgres(tmp_path: Path, executor, cpu) -> None:
    url = os.environ.get("TUNEFLEET_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("TUNEFLEET_TEST_POSTGRES_URL is not set")
    import sqlalchemy as sa

    schema = f"tuner_{uuid.uuid4().hex[:10]}"
    base = url.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    scoped = f"{base}{sep}options=-csearch_path%3D{schema}"
    try:
        first = _run(tmp_path, executor, scoped, 4, strategy="random", seed=3)
        second = _run(tmp_path, executor, scoped, 4, strategy="random", seed=3)
        assert (first.total_trials, second.total_trials) == (4, 8)
        assert second.best_ms <= first.best_ms
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


@pytest.mark.ray
def test_tune_through_ray_workers(tmp_path: Path, cpu) -> None:
    from tunefleet.workers import BuildConfig, create_executor

    db = f"sqlite:///{tmp_path / 'ray.db'}"
    config = BuildConfig(cache_dir=str(tmp_path / "kernels"))
    with create_executor("ray", config, num_cpus=2) as ray_executor:
        result = _run(tmp_path, ray_executor, db, 4, strategy="random", seed=6)
    assert result.trials == 4 and result.best_ms is not None and result.failures == 0


def test_progress_moves_before_the_batch_is_committed(tmp_path: Path, executor, cpu) -> None:
    db = f"sqlite:///{tmp_path / 'progress.db'}"
    key = structural_hash(ops.get_op("dense").build(SHAPE, "float32"))
    seen: list[tuple[int, int]] = []  # (trials reported, records in the database then)

    def note(p) -> None:
        with RecordStore.open(db) as store:
            seen.append((p.trials_done, len(store.history(key, cpu.fingerprint))))

    _run(tmp_path, executor, db, 4, strategy="random", seed=5, on_progress=note)
    assert [done for done, _ in seen] == [1, 2, 3, 4]
    assert seen[0][1] == 0, "the first trial is reported while its batch is still in flight"


def _tune_subprocess(tmp_path: Path, *args: str, path: str | None = None):
    import subprocess
    import sys

    env = dict(os.environ, HOME=str(tmp_path), TUNEFLEET_CACHE_DIR=str(tmp_path / "cache"))
    if path is not None:
        env["PATH"] = path
    code = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, "tune", *args], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_a_run_where_every_trial_fails_exits_1_and_says_why(tmp_path: Path, cpu) -> None:
    empty = tmp_path / "no-compilers"
    empty.mkdir()
    db = str(tmp_path / "fail.db")
    args = ("add", "--shape", "m=8,n=64", "--trials", "3", "--batch-size", "3", "--db", db)
    res = _tune_subprocess(tmp_path, *args, path=str(empty))
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("tunefleet: error: all 3 trials failed; most common: build_error")
    assert "cannot run gcc" in lines[0]


@pytest.mark.slow
def test_piped_progress_prints_plain_lines(tmp_path: Path, cpu) -> None:
    db = str(tmp_path / "piped.db")
    args = ("add", "--shape", "m=8,n=64", "--trials", "3", "--batch-size", "3", "--db", db)
    res = _tune_subprocess(tmp_path, *args)
    assert res.returncode == 0, res.stderr
    assert "add: 1/3 trials" in res.stdout and "add: 3/3 trials" in res.stdout
    assert "add [m=8,n=64] float32" in res.stdout  # the summary's title keeps its brackets
