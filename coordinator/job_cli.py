"""`tunefleet tune --model` and `tunefleet job list|status|resume|watch|submit|logs|cancel`:
model jobs on the CLI.

    tunefleet tune --model MODEL --budget N [--time 10m] [--phase decode,prefill]
                   [--set b=1:4,m=4096] [--scheduler gradient|round-robin] [--db URL]
                   [--redis URL] [--metrics-port PORT] [--no-pipeline]
                   [--json]
    tunefleet job list [--json]          tunefleet job status JOB_ID [--json]
    tunefleet job resume JOB_ID [--redis URL] [--metrics-port PORT] [--json]
    tunefleet job watch JOB_ID [--redis URL]
    tunefleet job submit --address URL (--model ... | --job JOB_ID) [--json]   (a Ray cluster)
    tunefleet job submit --k8s [--dry-run] [--namespace NS] [--image IMG] [--cluster NAME]
                         (--model ... | --job JOB_ID)        (a KubeRay RayJob, docs/deploy.md)
    tunefleet job logs JOB_ID            tunefleet job cancel JOB_ID

Progress is a live table on a terminal and one plain line per round when piped. Environment
variables (TUNEFLEET_DB_URL, TUNEFLEET_CACHE_DIR, TUNEFLEET_REDIS_URL, RAY_ADDRESS, KUBECONFIG)
are read here and nowhere deeper.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from tunefleet.coordinator import k8s_jobs, ray_jobs
from tunefleet.coordinator.buckets import DimSpecError, parse_assignments
from tunefleet.coordinator.fleet_state import (
    FleetEvent,
    FleetState,
    FleetStateError,
    FleetStateUnavailable,
    open_fleet_state,
)
from tunefleet.coordinator.jobs import (
    JobConfig,
    JobError,
    JobOptions,
    JobResult,
    job_status,
    load_model,
    plan_job,
    resume_job,
    start_job,
)
from tunefleet.coordinator.models import ModelConfigError
from tunefleet.coordinator.presets import PRESETS
from tunefleet.database import RecordStore
from tunefleet.database.cli import db_option, open_store, resolve_cli_url
from tunefleet.database.errors import DatabaseError
from tunefleet.tuner.cost_model import CostModelError
from tunefleet.tuner.space import SpaceError
from tunefleet.tuner.strategy import StrategyError
from tunefleet.tuner.task_scheduler import SchedulerError
from tunefleet.tuner.tuning import TuneError, default_cache_dir
from tunefleet.workers.executor import ExecutorError
from tunefleet.workers.targets import TargetError, TargetKind

SCHEDULERS = {"gradient": "gradient", "round-robin": "round_robin"}
_FAILURES = (
    JobError,
    TuneError,
    DatabaseError,
    TargetError,
    ExecutorError,
    SpaceError,
    StrategyError,
    CostModelError,
    SchedulerError,
    ray_jobs.RayJobError,
    k8s_jobs.K8sJobError,
)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def parse_duration(text: str) -> float:
    """`90`, `90s`, `10m`, `1.5h` as seconds (ValueError when malformed or not positive)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if m is None:
        raise ValueError(f"expected a duration such as 90s, 10m or 1h, got {text!r}")
    seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if seconds <= 0:
        raise ValueError(f"the time limit must be positive, got {text!r}")
    return seconds


redis_option = click.option(
    "--redis",
    "redis_url",
    metavar="URL",
    envvar="TUNEFLEET_REDIS_URL",
    help="Share leases, progress and the poison list through this Redis "
    "(redis://[:password@]host:port/db); without it the job coordinates only with itself.",
)


metrics_option = click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve the job's Prometheus metrics on this port (0: a free one, printed to stderr).",
)


@contextmanager
def serve_metrics(port: int | None) -> Iterator[Any]:
    """The job's `JobMetrics` served over HTTP on `port` (None without --metrics-port); one
    line and exit 1 when the port cannot be bound."""
    if port is None:
        yield None
        return
    from tunefleet.dashboards.metrics import JobMetrics

    metrics = JobMetrics()
    try:
        bound = metrics.serve(port)
    except OSError as err:
        raise click.ClickException(
            f"cannot serve metrics on port {port}: {err.strerror or err}; "
            "pick a free port with --metrics-port"
        ) from None
    click.echo(f"tunefleet: metrics on http://0.0.0.0:{bound}/metrics", err=True)
    try:
        yield metrics
    finally:
        metrics.close()


@contextmanager
def open_fleet(redis_url: str | None) -> Iterator[FleetState | None]:
    """The fleet state `--redis` names (None without it); one line and exit 1 when Redis
    cannot be reached or the URL is not a Redis URL (its password masked)."""
    if redis_url is None:
        yield None
        return
    try:
        fleet = open_fleet_state(redis_url)
    except FleetStateError as err:
        raise click.ClickException(str(err)) from None
    with fleet:
        yield fleet


def job_config(
    model: str,
    *,
    target: str,
    budget: int | None,
    time_text: str | None,
    phase_text: str,
    set_text: str,
    scheduler: str,
    strategy: str,
    seed: int,
    batch_size: int,
    pipeline: bool = True,
    task_text: str = "",
) -> JobConfig:
    """The JobConfig of `tune --model`'s options (click usage errors name the bad option)."""
    if budget is None:
        raise click.BadParameter("give a trial budget with --budget N", param_hint="--budget")
    if budget < 1:
        raise click.BadParameter(f"must be at least 1 trial (got {budget})", param_hint="--budget")
    try:
        load_model(model)
    except ModelConfigError as err:
        if "unknown model" in str(err):
            raise click.BadParameter(str(err), param_hint="--model") from None
        raise click.ClickException(str(err)) from None
    try:
        time_s = parse_duration(time_text) if time_text else None
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--time") from None
    phases = tuple(p.strip() for p in phase_text.split(",") if p.strip())
    try:
        sets = parse_assignments(set_text)
    except DimSpecError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
    try:
        config = JobConfig(
            model=model, phases=phases, sets=sets, budget=budget, time_s=time_s, target=target,
            strategy=strategy, scheduler=SCHEDULERS[scheduler], seed=seed,
            trials_per_round=batch_size, pipeline=pipeline,
            tasks=tuple(t.strip() for t in task_text.split(",") if t.strip()),
        )  # fmt: skip
    except JobError as err:
        raise click.BadParameter(str(err), param_hint="--phase") from None
    if config.tasks:
        try:
            plan_job(config)
        except JobError as err:
            raise click.BadParameter(str(err), param_hint="--tasks") from None
    return config


def tune_model(
    model: str,
    *,
    target: str,
    budget: int | None,
    time_text: str | None,
    phase_text: str,
    set_text: str,
    scheduler: str,
    strategy: str,
    seed: int,
    batch_size: int,
    db_url: str | None,
    workers: str,
    as_json: bool,
    redis_url: str | None = None,
    metrics_port: int | None = None,
    pipeline: bool = True,
    task_text: str = "",
) -> None:
    """`tunefleet tune --model`: validate the request, create the job and run it."""
    config = job_config(
        model, target=target, budget=budget, time_text=time_text, phase_text=phase_text,
        set_text=set_text, scheduler=scheduler, strategy=strategy, seed=seed,
        batch_size=batch_size, pipeline=pipeline, task_text=task_text,
    )  # fmt: skip
    url = resolve_cli_url(db_url)
    _run_job(lambda opts: start_job(config, url, opts), workers, redis_url, metrics_port, as_json)


@click.group(name="job")
def job() -> None:
    """List, inspect and resume model-tuning jobs."""


@job.command(name="list")
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_jobs(db_url: str | None, as_json: bool) -> None:
    """Every job of the database, newest first."""
    with open_store(db_url) as store:
        rows = []
        for info in _guarded(store.list_jobs):
            _, res = job_status(store, info.id)
            rows.append((info, res))
    if as_json:
        out = [
            {
                "job_id": info.id,
                "name": info.name,
                "model": info.model,
                "status": info.status,
                "budget": info.budget,
                "trials": res.trials,
                "estimated_ms": res.estimated_ms,
                "target": info.target_fingerprint,
                "created_at": info.created_at.isoformat(),
            }
            for info, res in rows
        ]
        click.echo(json.dumps(out, indent=2))
        return
    if not rows:
        click.echo("no jobs")
        return
    for info, res in rows:
        click.echo(
            f"{info.id:>4}  {info.status:<9}  {res.trials}/{info.budget} trials  "
            f"{_ms(res.estimated_ms):>12}  {info.name}  ({info.created_at:%Y-%m-%d %H:%M})"
        )


@job.command(name="status")
@click.argument("job_id", type=int)
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(job_id: int, db_url: str | None, as_json: bool) -> None:
    """One job: its status, budget used and the best time of every task."""
    with open_store(db_url) as store:
        _, res = _guarded(lambda: job_status(store, job_id))
    if as_json:
        click.echo(json.dumps(res.to_json_dict(), indent=2))
    else:
        click.echo(_summary(res))


@job.command(name="resume")
@click.argument("job_id", type=int)
@db_option
@click.option("--workers", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@redis_option
@metrics_option
@click.option("--json", "as_json", is_flag=True, help="Print the final state as JSON.")
def resume(
    job_id: int,
    db_url: str | None,
    workers: str,
    redis_url: str | None,
    metrics_port: int | None,
    as_json: bool,
) -> None:
    """Continue a stopped or killed job from the database."""
    url = resolve_cli_url(db_url)
    _run_job(lambda opts: resume_job(job_id, url, opts), workers, redis_url, metrics_port, as_json)


def _run_job(
    run: Callable[[JobOptions], JobResult],
    workers: str,
    redis_url: str | None,
    metrics_port: int | None,
    as_json: bool,
) -> None:
    """Run a job (`run` starts or resumes it) with its fleet state, metrics and progress
    display around it, then print its final state."""
    with (
        open_fleet(redis_url) as fleet,
        serve_metrics(metrics_port) as metrics,
        _reporting(as_json) as on_progress,
    ):
        opts = _options(workers, on_progress, fleet, metrics)
        result = _guarded(lambda: run(opts))
    _finish(result, as_json)


ENDED = ("done", "cancelled", "failed")


@job.command(name="watch")
@click.argument("job_id", type=int)
@db_option
@redis_option
@click.option("--poll", "poll_s", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Seconds between looks at the database (or waits for an event).")  # fmt: skip
def watch(job_id: int, db_url: str | None, redis_url: str | None, poll_s: float) -> None:
    """Print a job's progress as it happens, until it ends.

    With --redis the job's event stream is read (from its start); without it the job's rows
    in the database are polled. A job that already ended prints its final status at once.
    """
    with open_store(db_url) as store:
        info, res = _guarded(lambda: job_status(store, job_id))
        if info.status not in ENDED:
            with open_fleet(redis_url) as fleet:
                if fleet is not None:
                    _watch_events(fleet, store, job_id, poll_s)
                else:
                    _watch_rows(store, job_id, poll_s)
            info, res = _guarded(lambda: job_status(store, job_id))
    click.echo(_summary(res).splitlines()[0])


def _watch_events(fleet: FleetState, store: RecordStore, job_id: int, poll_s: float) -> None:
    """Echo the job's events until its end event (or until its row says it ended)."""
    after = "0"
    while True:
        try:
            events = fleet.read_events(str(job_id), after, block_ms=int(poll_s * 1000))
        except FleetStateUnavailable as err:
            click.echo(f"tunefleet: warning: {err}; watching the database instead", err=True)
            _watch_rows(store, job_id, poll_s)
            return
        for event in events:
            after = event.id
            click.echo(_event_line(job_id, event))
            if event.fields.get("type") == "end":
                return
        if not events:
            info, _ = _guarded(lambda: job_status(store, job_id))
            if info.status in ENDED:
                return


def _watch_rows(store: RecordStore, job_id: int, poll_s: float) -> None:
    """Echo a line whenever the job's trial count moves, until its row says it ended."""
    seen = -1
    while True:
        info, res = _guarded(lambda: job_status(store, job_id))
        if info.status in ENDED:
            return
        if res.trials != seen:
            seen = res.trials
            click.echo(
                f"job {job_id}: {info.status}, {res.trials}/{res.budget} trials, "
                f"{res.finished_tasks}/{len(res.tasks)} tasks finished, "
                f"estimated {_ms(res.estimated_ms)}"
            )
        time.sleep(poll_s)


def _event_line(job_id: int, event: FleetEvent) -> str:
    f = event.fields
    kind = f.get("type", "")
    if kind == "start":
        return f"job {job_id}: started, budget {f.get('budget', '?')} trials"
    if kind == "round":
        best = f"{float(f['best_ms']):.4f} ms" if "best_ms" in f else "-"
        return (
            f"job {job_id}: {f.get('workload', '?')} [{f.get('bucket') or '-'}]: "
            f"{f.get('trials', '?')} trials, best {best}, {f.get('status', '?')} "
            f"({f.get('job_trials', '?')} job trials)"
        )
    if kind == "end":
        return f"job {job_id}: ended {f.get('status', '?')}"
    return f"job {job_id}: " + ", ".join(f"{k}={v}" for k, v in f.items())


# -- helpers -----------------------------------------------------------------------------------


@job.command(name="submit")
@click.option("--address", metavar="URL",
              help="The Ray job server (dashboard), e.g. http://HEAD:8265.")  # fmt: skip
@click.option("--k8s", "on_k8s", is_flag=True,
              help="Submit to Kubernetes as a KubeRay RayJob instead (kubeconfig: $KUBECONFIG "
              "or ~/.kube/config).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="With --k8s: print the RayJob, create nothing.")
@click.option("--namespace", metavar="NS",
              help=f"With --k8s: the fleet's namespace [{k8s_jobs.DEFAULT_NAMESPACE}]")  # fmt: skip
@click.option("--image", metavar="IMAGE",
              help="With --k8s: the tunefleet image of the job's own Ray cluster "
              f"[{k8s_jobs.default_image()}].")  # fmt: skip
@click.option("--cluster", metavar="NAME",
              help="With --k8s: run on this RayCluster (e.g. tunefleet) instead of a cluster "
              "of the job's own.")  # fmt: skip
@click.option("--job", "existing", type=int, metavar="JOB_ID",
              help="Submit this existing job again instead of a new --model job.")  # fmt: skip
@click.option("--model", "model_spec", metavar="NAME|PATH", help="A preset or a config.json.")
@click.option("--budget", type=int, help="Trials for the whole job.")
@click.option("--time", "time_text", metavar="DURATION", help="Wall-time limit: 90s, 10m, 1h.")
@click.option("--phase", "phase_text", default="decode,prefill", show_default=True)
@click.option("--set", "set_text", default="", metavar="DIM=V:V,...", help="Bucket values.")
@click.option("--tasks", "task_text", default="", metavar="NAME,...",
              help="Tune only these tasks of the model.")  # fmt: skip
@click.option("--scheduler", type=click.Choice(list(SCHEDULERS)), default="gradient",
              show_default=True)  # fmt: skip
@click.option("--target", type=click.Choice([k.value for k in TargetKind]), default="cpu",
              show_default=True)  # fmt: skip
@click.option("--strategy", type=click.Choice(["evolutionary", "random"]),
              default="evolutionary", show_default=True)  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--no-pipeline", "no_pipeline", is_flag=True,
              help="Build each batch only after the last one was timed.")  # fmt: skip
@click.option(
    "--workers",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="Workers of the job inside the cluster (ray: the cluster's, via RAY_ADDRESS).",
)
@db_option
@click.option("--redis", "redis_url", metavar="URL",
              help="Redis URL for the job, as its TUNEFLEET_REDIS_URL (else ours).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def submit(
    address: str | None,
    on_k8s: bool,
    dry_run: bool,
    namespace: str | None,
    image: str | None,
    cluster: str | None,
    existing: int | None,
    model_spec: str | None,
    budget: int | None,
    time_text: str | None,
    phase_text: str,
    set_text: str,
    task_text: str,
    scheduler: str,
    target: str,
    strategy: str,
    seed: int,
    batch_size: int,
    no_pipeline: bool,
    workers: str,
    db_url: str | None,
    redis_url: str | None,
    as_json: bool,
) -> None:
    """Run a model job on a Ray cluster through Ray's job API; prints job and submission id.

    With --k8s the job becomes a KubeRay RayJob in the fleet's namespace, which runs it with
    the cluster's database and Redis (docs/deploy.md).
    """
    if on_k8s:
        if address is not None:
            raise click.UsageError("--address names a Ray job server: give it or --k8s, not both")
        tuning = dict(budget=budget, time_text=time_text, phase_text=phase_text,
                      set_text=set_text, scheduler=scheduler, strategy=strategy, seed=seed,
                      batch_size=batch_size, pipeline=not no_pipeline,
                      task_text=task_text)  # fmt: skip
        manifest = _rayjob(existing, model_spec, target, workers, tuning,
                           k8s_jobs.RayJobOptions(namespace=namespace or k8s_jobs.DEFAULT_NAMESPACE,
                                                  image=image or "", cluster=cluster))  # fmt: skip
        _create_or_print(manifest, dry_run, as_json)
        return
    k8s_only = [name for name, given in (("--dry-run", dry_run), ("--namespace", namespace),
                ("--image", image), ("--cluster", cluster)) if given]  # fmt: skip
    if k8s_only:
        raise click.UsageError(f"{', '.join(k8s_only)} go with --k8s")
    if address is None:
        raise click.UsageError("give the Ray job server with --address URL (or use --k8s)")
    url = resolve_cli_url(db_url)
    redis = redis_url or os.environ.get(ray_jobs.REDIS_ENV_VAR) or None
    if existing is not None:
        if model_spec is not None:
            raise click.UsageError("give either --job JOB_ID or --model, not both")
        if no_pipeline:
            raise click.UsageError("--no-pipeline goes with --model; a job keeps its own setting")
        sub = _guarded(lambda: ray_jobs.resubmit(existing, address, url, redis, workers))
    else:
        if model_spec is None:
            raise click.UsageError("give the job to run: --model MODEL (or --job JOB_ID)")
        config = job_config(
            model_spec, target=target, budget=budget, time_text=time_text,
            phase_text=phase_text, set_text=set_text, scheduler=scheduler, strategy=strategy,
            seed=seed, batch_size=batch_size, pipeline=not no_pipeline, task_text=task_text,
        )  # fmt: skip
        sub = _guarded(lambda: ray_jobs.submit(config, address, url, redis, workers))
    if as_json:
        click.echo(json.dumps(sub.to_json_dict(), indent=2))
        return
    said = "submitted" if sub.created else f"already submitted ({sub.ray_status})"
    click.echo(f"job_id {sub.job_id}\nsubmission_id {sub.submission_id}\n{said} to {address}")


def _rayjob(
    existing: int | None,
    model_spec: str | None,
    target: str,
    workers: str,
    tuning: dict[str, Any],
    options: k8s_jobs.RayJobOptions,
) -> dict[str, Any]:
    """The RayJob of `job submit --k8s`: `job resume ID` for --job, else `tune --model` with
    the tuning options (usage errors for options that have no meaning there)."""
    ctx = click.get_current_context()
    for param, flag in (("db_url", "--db"), ("redis_url", "--redis")):
        if ctx.get_parameter_source(param) is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(
                f"{flag} does not go with --k8s: the job uses the cluster's PostgreSQL and "
                f"Redis, whose passwords are in the Secret {k8s_jobs.CREDENTIALS_SECRET}"
            )
    for value, hint in ((options.namespace, "--namespace"), (options.cluster, "--cluster")):
        if value is not None and not _DNS_LABEL.fullmatch(value):
            raise click.BadParameter(
                f"{value!r} is not a Kubernetes name (lower-case letters, digits and '-', "
                "at most 63)", param_hint=hint,
            )  # fmt: skip
    if options.cluster is not None and options.image:
        raise click.UsageError("--image is the image of a job's own cluster: with --cluster the "
                               "cluster's own image runs the job")  # fmt: skip
    # a job's own cluster runs one coordinator, which serves its metrics on the port the
    # manifests' Prometheus scrapes; on a shared cluster (--cluster) jobs would clash on it
    port = k8s_jobs.COORDINATOR_METRICS_PORT if options.cluster is None else None
    if existing is not None:
        if model_spec is not None:
            raise click.UsageError("give either --job JOB_ID or --model, not both")
        if not tuning["pipeline"]:
            raise click.UsageError("--no-pipeline goes with --model; a job keeps its own setting")
        command = ray_jobs.entrypoint(existing, workers, port)
        return k8s_jobs.render_rayjob(command, f"job-{existing}", target, workers, options)
    if model_spec is None:
        raise click.UsageError("give the job to run: --model MODEL (or --job JOB_ID)")
    if model_spec not in PRESETS:
        raise click.BadParameter(
            f"with --k8s the model must be a preset ({', '.join(sorted(PRESETS))}): the job "
            "runs in the cluster's image, where a config.json of this machine is not",
            param_hint="--model",
        )
    config = job_config(model_spec, target=target, **tuning)
    command = ray_jobs.tune_entrypoint(config, workers, port)
    return k8s_jobs.render_rayjob(command, model_spec, target, workers, options)


def _create_or_print(manifest: dict[str, Any], dry_run: bool, as_json: bool) -> None:
    """Print the RayJob (--dry-run) or create it and say how to follow it."""
    if dry_run:
        text = json.dumps(manifest, indent=2) if as_json else k8s_jobs.manifest_yaml(manifest)
        click.echo(text.rstrip("\n"))
        return
    _guarded(lambda: k8s_jobs.create_rayjob(manifest, os.environ.get("KUBECONFIG") or None))
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    if as_json:
        out = {"name": name, "namespace": ns, "entrypoint": manifest["spec"]["entrypoint"],
               "created": True}  # fmt: skip
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"rayjob {name} created in namespace {ns}\n"
        f"status: kubectl -n {ns} get rayjob {name}\n"
        f"log:    kubectl -n {ns} logs -f job/{name}"
    )


@job.command(name="logs")
@click.argument("job_id", type=int)
@db_option
def logs(job_id: int, db_url: str | None) -> None:
    """The log of a job's Ray submission (credentials masked)."""
    url = resolve_cli_url(db_url)
    redis = os.environ.get(ray_jobs.REDIS_ENV_VAR) or None
    click.echo(_guarded(lambda: ray_jobs.logs(job_id, url, redis)), nl=False)


@job.command(name="cancel")
@click.argument("job_id", type=int)
@db_option
def cancel(job_id: int, db_url: str | None) -> None:
    """Stop a job's Ray submission and mark the job cancelled (it can be resumed)."""
    ray_state = _guarded(lambda: ray_jobs.cancel(job_id, resolve_cli_url(db_url)))
    click.echo(f"job {job_id}: cancelled (Ray: {ray_state})")


# -- helpers -----------------------------------------------------------------------------------


def _options(
    workers: str,
    on_progress: Callable[[JobResult], None] | None,
    fleet: FleetState | None = None,
    metrics: Any = None,
) -> JobOptions:
    cache = os.environ.get("TUNEFLEET_CACHE_DIR") or default_cache_dir()
    if workers == "ray" and os.environ.get("RAY_ADDRESS"):
        _join_cluster(os.environ["RAY_ADDRESS"])
    return JobOptions(
        workers=workers, cache_dir=cache, on_progress=on_progress, fleet=fleet, metrics=metrics
    )


def _join_cluster(address: str) -> None:
    """Connect this process to the Ray cluster a submitted job runs in (Ray sets RAY_ADDRESS
    there), so `--workers ray` uses that cluster instead of starting a local instance."""
    import logging

    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING)


def _guarded(work: Callable[[], Any]) -> Any:
    """Run `work`, turning the loop's expected failures into one-line errors (exit 1)."""
    try:
        return work()
    except ModelConfigError as err:
        raise click.ClickException(str(err)) from None
    except _FAILURES as err:
        raise click.ClickException(str(err)) from None


def _finish(result: JobResult, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result.to_json_dict(), indent=2))
    else:
        click.echo(_summary(result))


@contextmanager
def _reporting(as_json: bool) -> Iterator[Callable[[JobResult], None] | None]:
    """Progress for a running job: nothing with --json, a live table on a terminal, else one
    plain line per round."""
    if as_json:
        yield None
    elif sys.stdout.isatty():
        from rich.live import Live

        with Live(refresh_per_second=4, transient=False) as live:
            yield lambda res: live.update(_table(res))
    else:
        yield _progress_line()


def _progress_line() -> Callable[[JobResult], None]:
    start = time.monotonic()

    def update(res: JobResult) -> None:
        click.echo(
            f"job {res.job_id}: {res.last}: {res.trials}/{res.budget} trials, "
            f"{res.finished_tasks}/{len(res.tasks)} tasks finished, "
            f"estimated {_ms(res.estimated_ms)}, {time.monotonic() - start:.0f} s"
        )

    return update


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f} ms"


def _bucket(bucket: Any) -> str:
    return ",".join(f"{k}={v}" for k, v in dict(bucket).items()) or "-"


def _table(res: JobResult) -> Any:
    from rich.table import Table

    table = Table(
        title=f"job {res.job_id}: {res.trials}/{res.budget} trials, "
        f"{res.finished_tasks}/{len(res.tasks)} tasks finished, "
        f"estimated {_ms(res.estimated_ms)}"
    )
    for col in ("task", "bucket", "weight", "trials", "best", "status"):
        table.add_column(col)
    for t in res.tasks:
        table.add_row(
            t.name, _bucket(t.bucket), f"{t.weight:g}", str(t.trials), _ms(t.best_ms), t.status
        )
    return table


def _summary(res: JobResult) -> str:
    lines = [
        f"job {res.job_id}: {res.status}, {res.trials}/{res.budget} trials, "
        f"estimated {_ms(res.estimated_ms)}, {res.elapsed_s:.0f} s"
    ]
    for t in res.tasks:
        extra = f"  ({t.note})" if t.note else ""
        lines.append(
            f"  {t.name} [{_bucket(t.bucket)}] x{t.weight:g}: {t.trials} trials, "
            f"best {_ms(t.best_ms)}, default {_ms(t.default_ms)}, {t.status}{extra}"
        )
    return "\n".join(lines)
