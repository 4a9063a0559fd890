"""Model jobs on the CPU target: plan, the round loop, job rows, the CLI, and resume after
SIGKILL. The tiny model's library-op tasks (norms, LM head) are measured; fused tasks wait
for their reference and are recorded as such."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from job_problems import only

from tunefleet.coordinator.graph import Phase
from tunefleet.coordinator.job_plan import chain_problem, plan_workloads
from tunefleet.coordinator.jobs import (
    JobConfig,
    JobError,
    JobOptions,
    plan_job,
    resume_job,
    start_job,
)
from tunefleet.coordinator.presets import resolve_model
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.database import RecordStore
from tunefleet.ir import ops, structural_hash
from tunefleet.tuner.task_tuner import target_info
from tunefleet.workers import (
    MeasureConfig,
    resolve_target,
)

MODEL = str(Path(__file__).parent / "data" / "tiny_llama.json")
FAST = MeasureConfig(guard_noise=False, repeats=3, warmup_ms=0.5, min_repeat_ms=0.3)
CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
TASK_KEYS = {"name", "workload_key", "bucket", "weight", "trials", "best_ms", "default_ms"}


def _plan(buckets: dict[str, tuple[int, ...]], problem_for=chain_problem):
    model = resolve_model(MODEL)
    tasks = [(Phase.DECODE, t) for t in model_tasks(model, Phase.DECODE, buckets=buckets)]
    return plan_workloads(tasks, problem_for)


def test_a_bucket_is_the_library_workload_at_that_point() -> None:
    plan = _plan({"b": (1, 4), "m": (16,)})
    norms = [w for w in plan if w.task.op == "rmsnorm"]
    assert [dict(w.bucket) for w in norms] == [{"b": 1}, {"b": 4}]
    built = ops.get_op("rmsnorm").build({"m": 4, "n": 64}, "float32", eps=1e-5)
    assert norms[1].workload_key == structural_hash(built)
    assert norms[1].func.shape_vars == ()
    assert all(w.problem is not None and not w.note for w in plan)  # fused tasks included
    fused = [w for w in _plan({"b": (1,), "m": (16,)}, only("rmsnorm")) if "+" in w.task.op]
    assert fused and all(w.problem is None and "no reference yet" in w.note for w in fused)


def test_a_config_without_trials_or_phases_is_refused() -> None:
    with pytest.raises(JobError, match="budget"):
        JobConfig(model=MODEL, budget=0)
    with pytest.raises(JobError, match="phase"):
        JobConfig(model=MODEL, phases=("train",))


def test_a_job_of_some_tasks_plans_only_those_and_keeps_them_on_resume() -> None:
    """`tune --model --tasks`: the named tasks in every phase asked for, nothing else; the
    stored config gives the same plan back (a resumed job tunes the same tasks)."""
    config = JobConfig(model=MODEL, sets={"b": (1,), "m": (16,), "n": (8,)},
                       tasks=("lm_head", "post_norm"))  # fmt: skip
    plan = plan_job(config)
    assert {(w.phase.value, w.task.names[0]) for w in plan} == {
        ("decode", "input_norm"),
        ("decode", "lm_head"),
        ("prefill", "input_norm"),
        ("prefill", "lm_head"),
    }  # post_norm is one of the norm task's names
    again = JobConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert again == config
    assert [w.workload_key for w in plan_job(again)] == [w.workload_key for w in plan]
    assert len(plan_job(JobConfig(model=MODEL, sets=config.sets))) > len(plan)
    with pytest.raises(JobError, match="unknown task gate"):
        plan_job(JobConfig(model=MODEL, tasks=("gate",)))


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["gradient", "round_robin"])
def test_a_job_runs_to_done_with_records_for_every_task_with_a_problem(
    tmp_path: Path, executor, cpu, scheduler: str
) -> None:
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    config = JobConfig(model=MODEL, phases=("decode",), sets={"b": (1,), "m": (16,)}, budget=8,
                       scheduler=scheduler, trials_per_round=4)  # fmt: skip
    rounds = []
    opts = JobOptions(workers=executor, model_dir=str(tmp_path / "models"), measure_config=FAST,
                      on_progress=rounds.append, problem_for=only("rmsnorm", "dense"))  # fmt: skip
    result = start_job(config, db, opts)
    assert result.status == "done" and result.trials == 8
    assert [r.trials for r in rounds] == [4, 8]
    tuned = [t for t in result.tasks if t.trials]
    assert {t.name for t in tuned} == {"decode/input_norm", "decode/lm_head"}
    assert all(t.trials == 4 and t.best_ms and t.status == "done" for t in tuned)
    assert result.estimated_ms == pytest.approx(sum(t.weight * t.best_ms for t in tuned))
    with RecordStore.open(db) as store:
        assert store.get_job(result.job_id).status == "done"
        counts = store.job_trial_counts(result.job_id)
        assert counts == {t.workload_key: 4 for t in tuned}
        for t in tuned:
            assert store.best(t.workload_key, cpu.fingerprint, 1)[0].median_ms == t.best_ms
        rows = {r.workload_key: r for r in store.list_tasks(result.job_id)}
    skipped = [t for t in result.tasks if not t.trials]
    assert skipped and all(rows[t.workload_key].status == "cancelled" for t in skipped)
    assert all(t.note.startswith("no reference yet") for t in skipped)
    with pytest.raises(JobError, match="is done"):
        resume_job(result.job_id, db, opts)


def _cli(tmp_path: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(tmp_path / "home"), TUNEFLEET_CACHE_DIR=str(tmp_path / "kc"))
    env.pop("TUNEFLEET_DB_URL", None)
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=env, timeout=240, **kw)  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["tune", "--model", MODEL, "--budget", "0"], 2, "--budget"),
        (["tune", "--model", "no-such-model", "--budget", "4"], 2, "unknown model"),
        (["tune", "--model", "{bad}", "--budget", "4"], 1, "not valid JSON"),
        (["job", "status", "7"], 1, "job 7 does not exist"),
        (["job", "resume", "7"], 1, "job 7 does not exist"),
        (["tune", "rmsnorm", "--shape", "m=2,n=64", "--no-pipeline"], 2, "--no-pipeline"),
        (
            ["tune", "--model", MODEL, "--budget", "4", "--tasks", "lm_head,nope"],
            2,
            "unknown task nope",
        ),
    ],
)
def test_bad_requests_say_one_line(tmp_path: Path, args: list[str], code: int, says: str) -> None:
    if args[2] == "{bad}":
        bad = tmp_path / "config.json"
        bad.write_text('{"hidden_size": 64,')
        args = [*args[:2], str(bad), *args[3:]]
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    with RecordStore.open(db) as store:  # something recorded that must survive
        store.create_job("keep", "tiny", _target(store), 1)
    done = _cli(tmp_path, *args, "--db", db)
    assert done.returncode == code
    assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr
    with RecordStore.open(db) as store:
        assert [j.name for j in store.list_jobs()] == ["keep"]


def _target(store: RecordStore) -> str:
    info = target_info(resolve_target("cpu"))
    store.ensure_target(info)
    return info.fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", [True, False])
def test_sigkill_mid_job_loses_at_most_one_round_and_resume_completes(
    tmp_path: Path, cpu, pipeline: bool
) -> None:
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    env = dict(os.environ, HOME=str(tmp_path / "home"), TUNEFLEET_CACHE_DIR=str(tmp_path / "kc"))
    args = ["tune", "--model", MODEL, "--phase", "decode", "--set", "b=1:4,m=16", "--budget",
            "16", "--batch-size", "4", "--scheduler", "round-robin", "--db", db]  # fmt: skip
    if not pipeline:
        args.append("--no-pipeline")
    proc = subprocess.Popen([sys.executable, "-c", CODE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    reported = []
    deadline = time.monotonic() + 180
    try:
        assert proc.stdout is not None
        while len(reported) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "trials," in line:
                reported.append(int(line.split(": ")[2].split("/")[0]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert reported == [4, 8], "two rounds were reported before the kill"
    with RecordStore.open(db) as store:
        (job,) = store.list_jobs()
        assert job.status == "running"  # killed: nobody marked it
        assert job.config["pipeline"] is pipeline  # and resume keeps it
        committed = sum(store.job_trial_counts(job.id).values())
    # pipelined, one batch is being timed and the next built: only the timed one has results
    assert reported[-1] <= committed <= reported[-1] + 4, "at most the round in flight is lost"

    done = _cli(tmp_path, "job", "resume", str(job.id), "--json", "--db", db)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {"job_id", "status", "trials", "estimated_ms", "tasks"} <= set(out)
    assert out["status"] == "done" and out["trials"] == 16
    assert all(TASK_KEYS <= set(t) for t in out["tasks"])
    assert sorted(t["trials"] for t in out["tasks"] if t["trials"]) == [4, 4, 4, 4]
    with RecordStore.open(db) as store:
        assert sum(store.job_trial_counts(job.id).values()) == 16
        for t in out["tasks"]:
            hashes = [r.trace_hash for r in store.history(t["workload_key"], cpu.fingerprint)]
            assert len(hashes) == len(set(hashes)) == t["trials"], "nothing measured twice"
    listed = _cli(tmp_path, "job", "list", "--json", "--db", db)
    assert json.loads(listed.stdout)[0]["status"] == "done"


@pytest.mark.slow
def test_every_task_of_a_model_is_tuned_fused_ones_included(tmp_path: Path, executor) -> None:
    db = f"sqlite:///{tmp_path / 'all.db'}"
    plan = _plan({"b": (1,), "m": (16,)})
    config = JobConfig(model=MODEL, phases=("decode",), sets={"b": (1,), "m": (16,)},
                       budget=2 * len(plan), trials_per_round=2,
                       strategy="random")  # fmt: skip
    opts = JobOptions(workers=executor, model_dir=str(tmp_path / "models"), measure_config=FAST)
    result = start_job(config, db, opts)
    assert result.status == "done"
    assert {t.workload_key for t in result.tasks} == {w.workload_key for w in plan}
    assert all(t.trials > 0 and t.best_ms for t in result.tasks), [
        (t.name, t.trials, t.best_ms, t.note) for t in result.tasks
    ]


@pytest.mark.slow
def test_the_time_limit_stops_a_round_being_timed(tmp_path: Path, executor, cpu) -> None:
    """A round that would run long past --time is cut when the limit passes: what came back
    is committed, the rest is dropped unrecorded, and the job ends done."""
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    slow = MeasureConfig(guard_noise=False, repeats=5, warmup_ms=0.5, min_repeat_ms=250)
    config = JobConfig(model=MODEL, phases=("decode",), sets={"b": (1,), "m": (16,)}, budget=16,
                       trials_per_round=8, time_s=4.0)  # fmt: skip
    opts = JobOptions(workers=executor, model_dir=str(tmp_path / "models"), measure_config=slow,
                      problem_for=only("rmsnorm"))  # fmt: skip
    start = time.monotonic()
    result = start_job(config, db, opts)
    took = time.monotonic() - start
    assert result.status == "done"
    assert result.trials < 8, f"the first round ran whole ({took:.1f} s)"
    with RecordStore.open(db) as store:
        counts = store.job_trial_counts(result.job_id)
        rows = store.list_tasks(result.job_id)
    assert sum(counts.values()) == result.trials == sum(r.trials_done for r in rows)
