"""Jobs sharing a fleet state: leases and fencing on commit, the poison list, Redis dying
mid-job, two jobs at once on the same model, and `job watch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest

from tunefleet.coordinator.fleet_local import LocalFleetState
from tunefleet.coordinator.fleet_state import open_fleet_state
from tunefleet.coordinator.job_fleet import FencedOut, JobFleet, failure_kind
from tunefleet.coordinator.job_plan import NoReference, chain_problem
from tunefleet.coordinator.jobs import JobConfig, JobOptions, JobResult, start_job
from tunefleet.database import NewRecord, RecordStore, WorkloadInfo
from tunefleet.ir.trace import Trace, trace_hash
from tunefleet.tuner.task_tuner import Outcome, target_info
from tunefleet.workers import (
    Executor,
    MeasureConfig,
)
from tunefleet.workers import probe_kernels as pk
from tunefleet.workers.builder import BuildInput
from tunefleet.workers.results import BuildResult, MeasureResult, RunInput

MODEL = str(Path(__file__).parent / "data" / "tiny_llama.json")
FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
DECODE_B1 = {"b": (1,), "m": (16,)}


def norms_only(task, dims):
    if task.op != "rmsnorm":
        raise NoReference(f"{task.op} is left out of this test")
    return chain_problem(task, dims)


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ, HOME=str(tmp_path / "home"), TUNEFLEET_CACHE_DIR=str(tmp_path / "kc"))
    env.pop("TUNEFLEET_DB_URL", None)
    return env


def _record(key: str, fingerprint: str, trace_hash: str) -> NewRecord:
    return NewRecord(
        workload_key=key,
        target_fingerprint=fingerprint,
        trace_json="{}",
        trace_hash=trace_hash,
        status="ok",
        timings_ms=(1.0,),
        median_ms=1.0,
    )


def test_a_commit_fenced_out_by_a_newer_lease_writes_nothing(tmp_path: Path, cpu) -> None:
    key = "w" * 64
    state = LocalFleetState()
    with RecordStore.open(f"sqlite:///{tmp_path / 'fence.db'}") as store:
        store.ensure_target(target_info(cpu))
        store.ensure_workload(WorkloadInfo(key, "rmsnorm", {"m": 4}, "float32", "{}"))
        first = JobFleet(state, 1, cpu.fingerprint, ttl_s=30)
        second = JobFleet(state, 2, cpu.fingerprint, ttl_s=30)
        try:
            assert first.acquire(key) and not second.acquire(key)
            store.commit([_record(key, cpu.fingerprint, "a")], first.fence(key))
            # The same holder restarted elsewhere takes the lease back with a newer token.
            assert state.acquire_lease(key, cpu.fingerprint, first.holder, 30) is not None
            with pytest.raises(FencedOut):
                store.commit([_record(key, cpu.fingerprint, "b")], first.fence(key))
            assert store.measured_hashes(key, cpu.fingerprint) == {"a"}
        finally:
            first.close()
            second.close()


def test_only_worker_crashes_and_hangs_count_as_poison() -> None:
    crash = Outcome("t", "run_error", "worker died: killed by SIGSEGV")
    hang = Outcome("t", "timeout", "no result after 10s while running; worker killed and replaced")
    assert failure_kind(crash) == "crash" and failure_kind(hang) == "hang"
    assert failure_kind(Outcome("t", "run_error", "CUDA error: illegal address")) is None
    assert failure_kind(Outcome("t", "timeout", "gcc took longer than 60s and was killed")) is None
    assert failure_kind(Outcome("t", "wrong_result", "")) is None


def _job(db: str, executor, tmp_path: Path, **kw) -> JobResult:
    config = JobConfig(model=MODEL, phases=("decode",), sets=DECODE_B1, budget=4,
                       trials_per_round=4, strategy="random")  # fmt: skip
    opts = JobOptions(workers=executor, model_dir=str(tmp_path / "models"), measure_config=FAST,
                      problem_for=norms_only, **kw)  # fmt: skip
    return start_job(config, db, opts)


def _hashes(db: str, result: JobResult, fingerprint: str) -> list[str]:
    (task,) = [t for t in result.tasks if t.trials]
    with RecordStore.open(db) as store:
        return [r.trace_hash for r in store.history(task.workload_key, fingerprint)]


class PlantedCrash(Executor):
    """The real local executor, except that the candidate whose trace hash is `victim` is
    built as a probe kernel that segfaults (run on the vector-add problem it was written for),
    so its worker really dies with SIGSEGV."""

    name = "planted-crash"

    def __init__(self, inner: Executor, victim: str) -> None:
        super().__init__(inner.build_config)
        self.inner = inner
        self.victim = victim
        self.crashes = 0
        self._planted: list[Future[BuildResult]] = []

    def build(self, batch: Sequence[BuildInput]) -> list[Future[BuildResult]]:
        planted = [b.trace is not None and trace_hash(Trace.from_json(b.trace)) == self.victim
                   for b in batch]  # fmt: skip
        swapped = [
            BuildInput(b.target, kernel=pk.c_vector_add("segfault")) if hit else b
            for b, hit in zip(batch, planted, strict=True)
        ]
        futures = self.inner.build(swapped)
        self._planted += [f for f, hit in zip(futures, planted, strict=True) if hit]
        return futures

    def run(self, batch: Sequence[RunInput]) -> list[Future[MeasureResult]]:
        faulty = {id(f.result().artifact) for f in self._planted if f.done()}
        swapped = []
        for r in batch:
            if id(r.artifact) in faulty:
                self.crashes += 1
                r = RunInput(r.artifact, pk.vector_add_problem(1024), r.config)
            swapped.append(r)
        return self.inner.run(swapped)

    def close(self) -> None:
        pass  # the module's executor is closed by its fixture


@pytest.mark.slow
def test_a_trace_that_crashed_two_workers_is_skipped_by_the_next_job(
    tmp_path: Path, executor, cpu
) -> None:
    probe_db = f"sqlite:///{tmp_path / 'probe.db'}"
    probe = _job(probe_db, executor, tmp_path)
    proposed = _hashes(probe_db, probe, cpu.fingerprint)
    assert len(proposed) == 4, "the seeded search proposes the same first round every time"
    victim = proposed[0]
    (task,) = [t for t in probe.tasks if t.trials]

    state = LocalFleetState()  # one fleet, jobs on databases of their own
    for n in (1, 2):
        planted = PlantedCrash(executor, victim)
        db = f"sqlite:///{tmp_path / f'crash{n}.db'}"
        crashed = _job(db, planted, tmp_path, fleet=state)
        assert crashed.status == "done" and planted.crashes == 1, f"job {n} proposed the victim"
        with RecordStore.open(db) as store:
            (rec,) = [r for r in store.history(task.workload_key, cpu.fingerprint)
                      if r.trace_hash == victim]  # fmt: skip
        assert rec.status == "run_error" and "SIGSEGV" in rec.error_msg
        assert (victim in state.poisoned(task.workload_key, cpu.fingerprint)) == (n == 2)

    planted = PlantedCrash(executor, victim)
    last_db = f"sqlite:///{tmp_path / 'last.db'}"
    last = _job(last_db, planted, tmp_path, fleet=state)
    hashes = _hashes(last_db, last, cpu.fingerprint)
    assert last.status == "done" and len(hashes) == 4
    assert victim not in hashes and planted.crashes == 0


@pytest.mark.redis
@pytest.mark.slow
def test_redis_killed_mid_job_finishes_from_the_database(
    tmp_path: Path, executor, cpu, own_redis
) -> None:
    proc, port = own_redis
    url = f"redis://:pw-own@127.0.0.1:{port}/0"
    db = f"sqlite:///{tmp_path / 'dies.db'}"
    warnings: list[str] = []
    seen: list[str] = []

    def after_round(res: JobResult) -> None:
        if proc.poll() is None:
            with open_fleet_state(url) as reader:
                seen.extend(e.fields["type"] for e in reader.read_events(str(res.job_id)))
            proc.kill()
            proc.wait(10)

    config = JobConfig(model=MODEL, phases=("decode",), sets={"b": (1, 4), "m": (16,)},
                       budget=12, trials_per_round=4, scheduler="round_robin")  # fmt: skip
    with open_fleet_state(url) as fleet:
        opts = JobOptions(workers=executor, model_dir=str(tmp_path / "models"),
                          measure_config=FAST, problem_for=norms_only, fleet=fleet,
                          on_progress=after_round, on_warning=warnings.append)  # fmt: skip
        result = start_job(config, db, opts)
    assert seen == ["start", "round"], "the first round's event arrived before the kill"
    assert result.status == "done" and result.trials == 12
    assert len(warnings) == 1 and "continues from the database alone" in warnings[0]
    assert "pw-own" not in warnings[0]
    with RecordStore.open(db) as store:
        assert sum(store.job_trial_counts(result.job_id).values()) == 12


def _tune(tmp_path: Path, db: str, url: str, *extra: str) -> subprocess.Popen[str]:
    args = ["tune", "--model", MODEL, "--phase", "decode", "--set", "b=1:4,m=16", "--budget",
            "12", "--batch-size", "4", "--db", db, "--redis", url, *extra]  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", CODE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(tmp_path))  # fmt: skip


@pytest.mark.redis
@pytest.mark.slow
def test_two_jobs_on_one_model_never_measure_a_trace_twice(tmp_path: Path, cpu, own_redis) -> None:
    _, port = own_redis
    url = f"redis://:pw-own@127.0.0.1:{port}/0"
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with RecordStore.open(db):
        pass  # created once, before two processes race to create it
    jobs = [_tune(tmp_path, db, url, "--json") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in jobs]
    for p, (out, err) in zip(jobs, outs, strict=True):
        assert p.returncode == 0, err
        assert json.loads(out)["status"] == "done"
    with RecordStore.open(db) as store:
        assert {j.status for j in store.list_jobs()} == {"done"}
        seen = Counter(
            (r.workload_key, r.target_fingerprint, r.trace_hash)
            for w in store.workloads()
            for r in store.history(w.key, cpu.fingerprint)
        )
        per_job = [sum(store.job_trial_counts(j.id).values()) for j in store.list_jobs()]
    assert per_job == [12, 12]
    assert sum(seen.values()) == 24
    assert [k for k, n in seen.items() if n > 1] == []


@pytest.mark.redis
@pytest.mark.slow
def test_job_watch_follows_the_stream_to_the_end(tmp_path: Path, cpu, own_redis) -> None:
    _, port = own_redis
    url = f"redis://:pw-own@127.0.0.1:{port}/0"
    db = f"sqlite:///{tmp_path / 'watched.db'}"
    job = _tune(tmp_path, db, url)
    try:
        assert job.stdout is not None
        first = job.stdout.readline()  # the first round's progress line: the job row exists
        assert first.startswith("job 1:"), job.stderr.read() if job.stderr else first
        watch = subprocess.run([sys.executable, "-c", CODE, "job", "watch", "1", "--db", db,
                                "--redis", url], capture_output=True, text=True,
                               env=_env(tmp_path), timeout=300)  # fmt: skip
    finally:
        job.communicate(timeout=300)
    assert job.returncode == 0
    assert watch.returncode == 0, watch.stderr
    lines = watch.stdout.splitlines()
    assert lines[0] == "job 1: started, budget 12 trials"
    assert sum(" trials, best " in line for line in lines) == 3
    assert lines[-2] == "job 1: ended done" and lines[-1].startswith("job 1: done, 12/12 trials")
    again = subprocess.run(
        [sys.executable, "-c", CODE, "job", "watch", "1", "--db", db],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    assert again.returncode == 0 and again.stdout.startswith("job 1: done, 12/12 trials")


def test_unreachable_redis_is_one_line_and_exit_1(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'none.db'}"
    args = ["tune", "--model", MODEL, "--phase", "decode", "--set", "b=1,m=16", "--budget", "4",
            "--db", db, "--redis", "redis://:secret-pw@127.0.0.1:1/0"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("tunefleet: error: ") and done.stderr.count("\n") == 1
    assert "secret-pw" not in done.stderr and "***" in done.stderr
    with RecordStore.open(db) as store:
        assert store.list_jobs() == []


@pytest.mark.slow
def test_job_watch_without_redis_polls_the_rows(tmp_path: Path, cpu) -> None:
    db = f"sqlite:///{tmp_path / 'polled.db'}"
    args = ["tune", "--model", MODEL, "--phase", "decode", "--set", "b=1:4,m=16", "--budget",
            "12", "--batch-size", "4", "--db", db]  # fmt: skip
    job = subprocess.Popen([sys.executable, "-c", CODE, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, env=_env(tmp_path))  # fmt: skip
    try:
        assert job.stdout is not None
        assert job.stdout.readline().startswith("job 1:")
        watch = subprocess.run([sys.executable, "-c", CODE, "job", "watch", "1", "--db", db,
                                "--poll", "0.2"], capture_output=True, text=True,
                               env=_env(tmp_path), timeout=300)  # fmt: skip
    finally:
        job.communicate(timeout=300)
    assert job.returncode == 0 and watch.returncode == 0, watch.stderr
    lines = watch.stdout.splitlines()
    assert lines[-1].startswith("job 1: done, 12/12 trials")
    assert all(line.startswith("job 1: running, ") for line in lines[:-1])
