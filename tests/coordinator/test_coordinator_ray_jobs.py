"""Model jobs submitted to a running Ray head through Ray's job API (`tunefleet job submit`).

The head is the one .ci/run starts (TUNEFLEET_TEST_RAY_ADDRESS); without it these tests skip.
The job runs on the same machine, so a SQLite file in the test's folder is its database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunefleet.coordinator.jobs import JobConfig, plan_job
from tunefleet.coordinator.ray_jobs import ACTIVE, submission_id
from tunefleet.database import RecordStore
from tunefleet.tuner.task_tuner import target_info
from tunefleet.workers import resolve_target

MODEL = str(Path(__file__).parent / "data" / "tiny_llama.json")
CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
SETS = {"b": (1,), "m": (16,)}


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(tmp_path / "home"), TUNEFLEET_CACHE_DIR=str(tmp_path / "kc"))
    env.pop("TUNEFLEET_DB_URL", None)
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def _wait(address: str, sid: str, timeout_s: float = 300) -> str:
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(sid).value
        if status not in ACTIVE:
            return status
        time.sleep(1)
    pytest.fail(f"Ray job {sid} still {status} after {timeout_s} s")


@pytest.mark.ray
@pytest.mark.ray_head
@pytest.mark.slow
def test_a_submitted_job_runs_to_done_once_with_records_for_every_task(
    tmp_path: Path, ray_head_address: str
) -> None:
    from ray.job_submission import JobSubmissionClient

    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    plan = plan_job(JobConfig(model=MODEL, phases=("decode",), sets=SETS))
    args = ["job", "submit", "--address", ray_head_address, "--model", MODEL, "--phase", "decode",
            "--set", "b=1,m=16", "--budget", str(2 * len(plan)), "--batch-size", "2",
            "--strategy", "random", "--db", db, "--json"]  # fmt: skip
    done = _cli(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    sub = json.loads(done.stdout)
    job_id, sid = sub["job_id"], sub["submission_id"]
    assert sid == submission_id(job_id, db) and sub["created"] is True
    assert db not in done.stdout + done.stderr

    status = _cli(tmp_path, "job", "status", str(job_id), "--json", "--db", db)
    assert status.returncode == 0, status.stderr  # the row exists before the run starts
    assert _wait(ray_head_address, sid) == "SUCCEEDED"

    client = JobSubmissionClient(ray_head_address)
    info = client.get_job_info(sid)
    assert info.entrypoint == f"tunefleet job resume {job_id} --workers local"
    with RecordStore.open(db) as store:
        job = store.get_job(job_id)
        assert job is not None and job.status == "done"
        assert job.config["ray"]["submission_id"] == sid
        counts = store.job_trial_counts(job_id)
    assert set(counts) == {w.workload_key for w in plan}, "every planned workload has records"
    assert sum(counts.values()) == 2 * len(plan)

    again = _cli(tmp_path, "job", "submit", "--address", ray_head_address, "--job", str(job_id),
                 "--db", db, "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    resub = json.loads(again.stdout)
    assert (resub["job_id"], resub["submission_id"]) == (job_id, sid)
    assert resub["created"] is False and resub["ray_status"] == "SUCCEEDED"
    ours = [j for j in client.list_jobs() if j.submission_id.startswith(sid)]
    assert len(ours) == 1, "resubmitting started no second run"
    with RecordStore.open(db) as store:
        assert sum(store.job_trial_counts(job_id).values()) == 2 * len(plan)

    logs = _cli(tmp_path, "job", "logs", str(job_id), "--db", db)
    assert logs.returncode == 0, logs.stderr
    assert f"job {job_id}: done" in logs.stdout
    raw = client.get_job_logs(sid)
    assert db not in raw and db not in logs.stdout, "the database URL never reaches the log"


@pytest.mark.ray
@pytest.mark.ray_head
def test_bad_addresses_and_unknown_jobs_say_one_line(tmp_path: Path, ray_head_address: str) -> None:
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    with RecordStore.open(db) as store:  # something recorded that must survive
        info = target_info(resolve_target("cpu"))
        store.ensure_target(info)
        store.create_job("keep", "tiny", info.fingerprint, 1)
    unreachable = "http://127.0.0.1:9"
    cases = [
        (["job", "submit", "--address", unreachable, "--model", MODEL, "--budget", "2"],
         1, f"cannot reach the Ray job server at {unreachable}"),
        (["job", "submit", "--address", ray_head_address, "--job", "99"], 1,
         "job 99 does not exist"),
        (["job", "logs", "99"], 1, "job 99 does not exist"),
        (["job", "cancel", "99"], 1, "job 99 does not exist"),
        (["job", "logs", "1"], 1, "job 1 was not submitted to Ray"),
        (["job", "submit", "--address", ray_head_address], 2, "--model"),
    ]  # fmt: skip
    for args, code, says in cases:
        done = _cli(tmp_path, *args, "--db", db)
        assert done.returncode == code, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, args
    if os.environ.get("RAY_AUTH_MODE") == "token":  # the head checks the token: none is refused
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        done = subprocess.run([sys.executable, "-c", CODE, "job", "submit", "--address",
                               ray_head_address, "--model", MODEL, "--budget", "2", "--db", db],
                              capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
        assert done.returncode == 1 and "refused the request" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    with RecordStore.open(db) as store:
        assert [j.name for j in store.list_jobs()] == ["keep"]


@pytest.mark.ray
@pytest.mark.ray_head
@pytest.mark.slow
def test_cancel_stops_the_run_and_a_resubmission_continues_it(
    tmp_path: Path, ray_head_address: str
) -> None:
    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    # the cancel must find the job running: it comes once the first batch is recorded, which
    # on a 2-core machine can take half of the time limit (imports, the first proposals).
    # Random proposals: the time limit is checked between rounds, and the evolutionary
    # search's rounds on this machine outlast it (the test is about cancel and resubmission)
    args = ["job", "submit", "--address", ray_head_address, "--model", MODEL, "--phase", "decode",
            "--set", "b=1,m=16", "--budget", "400", "--batch-size", "2", "--time", "45s",
            "--strategy", "random", "--db", db, "--json"]  # fmt: skip
    done = _cli(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    job_id, sid = json.loads(done.stdout)["job_id"], json.loads(done.stdout)["submission_id"]
    deadline = time.monotonic() + 120
    trials = 0
    while trials < 2 and time.monotonic() < deadline:
        time.sleep(1)
        with RecordStore.open(db) as store:
            trials = sum(store.job_trial_counts(job_id).values())
    assert trials >= 2, "the submitted job records trials"

    stopped = _cli(tmp_path, "job", "cancel", str(job_id), "--db", db)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == f"job {job_id}: cancelled (Ray: STOPPED)"
    assert _wait(ray_head_address, sid) == "STOPPED"
    with RecordStore.open(db) as store:
        job = store.get_job(job_id)
        assert job is not None and job.status == "cancelled"
        kept = sum(store.job_trial_counts(job_id).values())
    assert kept >= trials, "nothing recorded is lost"

    again = _cli(tmp_path, "job", "submit", "--address", ray_head_address, "--job", str(job_id),
                 "--db", db, "--json")  # fmt: skip
    assert again.returncode == 0, again.stderr
    resub = json.loads(again.stdout)
    assert resub["created"] is True and resub["submission_id"] == submission_id(job_id, db, 2)
    assert _wait(ray_head_address, resub["submission_id"]) == "SUCCEEDED"
    with RecordStore.open(db) as store:
        job = store.get_job(job_id)
        assert job is not None and job.status == "done"  # the time limit ended it
        assert sum(store.job_trial_counts(job_id).values()) > kept


@pytest.mark.ray
@pytest.mark.ray_head
@pytest.mark.slow
def test_a_submitted_job_with_ray_workers_uses_the_cluster_it_runs_in(
    tmp_path: Path, ray_head_address: str
) -> None:
    from ray.job_submission import JobSubmissionClient

    db = f"sqlite:///{tmp_path / 'jobs.db'}"
    args = ["job", "submit", "--address", ray_head_address, "--model", MODEL, "--phase", "decode",
            "--set", "b=1,m=16", "--budget", "4", "--batch-size", "2", "--workers", "ray",
            "--db", db, "--json"]  # fmt: skip
    done = _cli(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    sub = json.loads(done.stdout)
    assert _wait(ray_head_address, sub["submission_id"]) == "SUCCEEDED"
    info = JobSubmissionClient(ray_head_address).get_job_info(sub["submission_id"])
    assert info.entrypoint.endswith("--workers ray")
    with RecordStore.open(db) as store:
        job = store.get_job(sub["job_id"])
        assert job is not None and job.status == "done"
        assert sum(store.job_trial_counts(sub["job_id"]).values()) == 4
