"""Model jobs submitted to a Ray cluster through Ray's job API (`JobSubmissionClient`).

`submit` writes the job and task rows first (the id is known and `job status` works at once),
then submits the entrypoint `tunefleet job resume ID` under a submission id derived from the
job id and the database, so submitting the same job again returns the submission that exists
instead of starting a second run. The database URL (and the Redis URL, where given) reach the
job only as environment variables of its runtime_env: never on the entrypoint's command line,
and masked in every message this module returns. The job row's config keeps the Ray address,
the submission id and its attempt under the key `ray`, which `logs` and `cancel` read.
"""

from __future__ import annotations

import hashlib
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tunefleet.coordinator.fleet_state import mask_fleet_url
from tunefleet.coordinator.jobs import JobConfig, JobError, create_job
from tunefleet.database import RecordStore
from tunefleet.database.urls import ENV_VAR as DB_ENV_VAR
from tunefleet.database.urls import mask_url, scrub

REDIS_ENV_VAR = "TUNEFLEET_REDIS_URL"
ACTIVE = ("PENDING", "RUNNING")  # a submission in these states is the job's live run
FAILED_RUN = ("STOPPED", "FAILED")  # a new attempt may continue the job after these
T = TypeVar("T")


class RayJobError(RuntimeError):
    """The Ray job server cannot be reached, refused a request, or the job was never
    submitted; the message is one line without credentials."""


@dataclass(frozen=True)
class Submission:
    """A job of the database and the Ray submission that runs it."""

    job_id: int
    submission_id: str
    address: str
    ray_status: str  # Ray's job status: PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    created: bool  # False when an existing submission was returned

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "submission_id": self.submission_id,
            "address": self.address,
            "ray_status": self.ray_status,
            "created": self.created,
        }


def submission_id(job_id: int, db_url: str, attempt: int = 1) -> str:
    """The deterministic Ray submission id of a job's attempt: the job id plus a short digest
    of the database (without its password), so jobs of two databases never share an id."""
    digest = hashlib.sha256(mask_url(db_url).encode()).hexdigest()[:8]
    base = f"tunefleet-job-{job_id}-{digest}"
    return base if attempt == 1 else f"{base}-{attempt}"


def entrypoint(job_id: int, workers: str = "local", metrics_port: int | None = None) -> str:
    """The command the cluster runs: resume the job by id (credentials come from the env),
    serving its Prometheus metrics on `metrics_port` when one is given."""
    metrics = f" --metrics-port {int(metrics_port)}" if metrics_port is not None else ""
    return f"tunefleet job resume {int(job_id)} --workers {workers}{metrics}"


def tune_entrypoint(
    config: JobConfig, workers: str = "local", metrics_port: int | None = None
) -> str:
    """The command that runs a new job for `config` where no job row exists yet (a cluster
    with a database of its own): `tunefleet tune --model ...` with the options that parse back
    to the same config (credentials come from the env)."""
    args = ["tunefleet", "tune", "--model", config.model, "--budget", str(config.budget)]
    if config.time_s is not None:
        args += ["--time", _seconds(config.time_s)]
    args += ["--phase", ",".join(config.phases)]
    if config.sets:
        args += ["--set", ",".join(f"{d}={':'.join(map(str, v))}" for d, v in config.sets.items())]
    args += [
        "--scheduler", config.scheduler.replace("_", "-"), "--target", config.target,
        "--strategy", config.strategy, "--seed", str(config.seed),
        "--batch-size", str(config.trials_per_round), "--workers", workers,
    ]  # fmt: skip
    if not config.pipeline:
        args.append("--no-pipeline")
    if metrics_port is not None:
        args += ["--metrics-port", str(int(metrics_port))]
    return shlex.join(args)


def entrypoint_resources(target: str, workers: str = "local") -> tuple[float, float]:
    """(CPUs, GPUs) the entrypoint reserves: one CPU, plus one GPU for a CUDA target measured
    by the job itself (`--workers local`); with `--workers ray` the runner actors hold the GPUs."""
    return 1.0, 1.0 if target.startswith("cuda") and workers == "local" else 0.0


def connect(address: str, secrets: tuple[str, ...] = ()) -> Any:
    """A `JobSubmissionClient` for `address` (RayJobError with one line when unreachable)."""
    from ray.job_submission import JobSubmissionClient

    return _guard(lambda: JobSubmissionClient(address), address, secrets)


def submit(
    config: JobConfig,
    address: str,
    db_url: str,
    redis_url: str | None = None,
    workers: str = "local",
) -> Submission:
    """Create a job for `config` and submit it to the Ray cluster at `address`."""
    client = connect(address, _secrets(db_url, redis_url))  # before any row is written
    job_id = create_job(config, db_url)
    return _submit(client, job_id, address, db_url, redis_url, workers)


def resubmit(
    job_id: int,
    address: str,
    db_url: str,
    redis_url: str | None = None,
    workers: str = "local",
) -> Submission:
    """Submit an existing job: its live or finished submission is returned as it is; after a
    stopped or failed one (and a job not done) the next attempt continues it."""
    client = connect(address, _secrets(db_url, redis_url))
    with RecordStore.open(db_url) as store:
        if store.get_job(job_id) is None:
            raise JobError(f"job {job_id} does not exist")
    return _submit(client, job_id, address, db_url, redis_url, workers)


def logs(job_id: int, db_url: str, redis_url: str | None = None) -> str:
    """The log text of a job's Ray submission, with any credential replaced by ***."""
    ray_info = _ray_info(job_id, db_url)
    secrets = _secrets(db_url, redis_url)
    client = connect(ray_info["address"], secrets)
    text = _guard(lambda: client.get_job_logs(ray_info["submission_id"]), ray_info["address"],
                  secrets)  # fmt: skip
    return _scrubbed(text, secrets)


def cancel(job_id: int, db_url: str, wait_s: float = 15.0) -> str:
    """Stop a job's Ray submission and mark the job cancelled (resumable); Ray's status after
    waiting up to `wait_s` for the stop to land (Ray stops a job asynchronously)."""
    ray_info = _ray_info(job_id, db_url)
    secrets = _secrets(db_url)
    address, sid = ray_info["address"], ray_info["submission_id"]
    client = connect(address, secrets)
    _guard(lambda: client.stop_job(sid), address, secrets)
    deadline = time.monotonic() + wait_s
    status = str(_guard(lambda: client.get_job_status(sid), address, secrets).value)
    while status in ACTIVE and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(_guard(lambda: client.get_job_status(sid), address, secrets).value)
    with RecordStore.open(db_url) as store:
        job = store.get_job(job_id)
        if job is not None and job.status != "done":
            store.set_job_status(job_id, "cancelled")
    return status


# -- helpers -----------------------------------------------------------------------------------


def _submit(
    client: Any,
    job_id: int,
    address: str,
    db_url: str,
    redis_url: str | None,
    workers: str,
) -> Submission:
    secrets = _secrets(db_url, redis_url)
    with RecordStore.open(db_url) as store:
        job = store.get_job(job_id)
        assert job is not None
        stored = dict(job.config)
        attempt = int(stored.get("ray", {}).get("attempt", 1))
        sid = submission_id(job_id, db_url, attempt)
        info = _info(client, sid, address, secrets)
        if info is not None and (info.status.value not in FAILED_RUN or job.status == "done"):
            return Submission(job_id, sid, address, str(info.status.value), created=False)
        if info is not None:  # the last attempt stopped or failed: continue in a new one
            attempt += 1
            sid = submission_id(job_id, db_url, attempt)
        # recorded before the run starts: the loop keeps the row's config as it finds it
        stored["ray"] = {"address": address, "submission_id": sid, "attempt": attempt}
        store.set_job_config(job_id, stored)
        config = JobConfig.from_json(stored)
    env = {DB_ENV_VAR: db_url}
    if redis_url:
        env[REDIS_ENV_VAR] = redis_url
    cpus, gpus = entrypoint_resources(config.target, workers)
    try:
        _guard(
            lambda: client.submit_job(
                entrypoint=entrypoint(job_id, workers),
                submission_id=sid,
                runtime_env={"env_vars": env},
                metadata={"tunefleet_job": str(job_id)},
                entrypoint_num_cpus=cpus,
                entrypoint_num_gpus=gpus,
            ),
            address,
            secrets,
        )
    except RayJobError:
        info = _info(client, sid, address, secrets)  # a racing submitter got there first
        if info is None:
            raise
        return Submission(job_id, sid, address, str(info.status.value), created=False)
    return Submission(job_id, sid, address, "PENDING", created=True)


def _seconds(value: float) -> str:
    """A duration `parse_duration` reads back: whole seconds as `90s`, else to the millisecond."""
    if float(value).is_integer():
        return f"{int(value)}s"
    return f"{value:.3f}".rstrip("0") + "s"


def _info(client: Any, sid: str, address: str, secrets: tuple[str, ...]) -> Any:
    """The submission's JobDetails, or None when Ray has no submission of that id."""
    try:
        return _guard(lambda: client.get_job_info(sid), address, secrets)
    except RayJobError as err:
        if "status code 404" in str(err):
            return None
        raise


def _ray_info(job_id: int, db_url: str) -> Mapping[str, Any]:
    with RecordStore.open(db_url) as store:
        job = store.get_job(job_id)
    if job is None:
        raise JobError(f"job {job_id} does not exist")
    ray_info = job.config.get("ray")
    if not ray_info:
        raise RayJobError(f"job {job_id} was not submitted to Ray (see 'tunefleet job submit')")
    return ray_info


def _secrets(db_url: str, redis_url: str | None = None) -> tuple[str, ...]:
    """The strings no output may show: the URLs (their passwords are found by `_scrubbed`)."""
    return (db_url, redis_url) if redis_url else (db_url,)


def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
    """`text` with each URL of `secrets` masked and any password of theirs replaced by ***."""
    for secret in secrets:
        text = text.replace(secret, mask_fleet_url(secret))
        text = scrub(text, secret)
        password = urlsplit(secret).password
        if password:
            text = text.replace(password, "***")
    return text


def _guard(work: Callable[[], T], address: str, secrets: tuple[str, ...]) -> T:
    """Run a client call, turning Ray's and requests' failures into one-line RayJobErrors."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        return work()
    except (ConnectionError, requests.exceptions.ConnectionError, requests.exceptions.Timeout):
        raise RayJobError(f"cannot reach the Ray job server at {address}") from None
    except AuthenticationError:
        raise RayJobError(
            f"the Ray job server at {address} refused the request: set RAY_AUTH_MODE=token "
            "and the cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        ) from None
    except (RuntimeError, ValueError, requests.exceptions.RequestException) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RayJobError(_scrubbed(f"Ray job server at {address}: {first}", secrets)) from None
