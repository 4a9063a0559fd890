"""`tunefleet tune`: tune one operator on one target, record every trial, print a summary.

    tunefleet tune OP --shape k=v,... [--dtype D] [--target cpu|cuda] [--trials N] [--db URL]
                   [--workers local|ray] [--strategy evolutionary|random] [--seed S] [--json]
    tunefleet tune --model MODEL --budget N [--time 10m] [--phase decode,prefill] [--set ...]
                   [--scheduler gradient|round-robin] ...   (a model job: coordinator.job_cli)

A live progress bar shows trials, the best time so far, its GFLOP/s or GB/s and failures; a
second run on the same database continues from the records already there. Environment
variables (TUNEFLEET_DB_URL, TUNEFLEET_CACHE_DIR, TUNEFLEET_REDIS_URL for --model) are read
here and nowhere deeper.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

import click

from tunefleet.database.cli import db_option, resolve_cli_url
from tunefleet.database.errors import DatabaseError
from tunefleet.ir.analysis import bytes_moved, flops
from tunefleet.workers.cli import parse_shape, writable_dir
from tunefleet.workers.executor import ExecutorError
from tunefleet.workers.targets import Target, TargetError, TargetKind, resolve_target

from .cost_model import CostModelError
from .space import SpaceError
from .strategy import StrategyError
from .tuning import (
    Progress,
    TuneError,
    TuneResult,
    build_workload,
    default_cache_dir,
    default_model_dir,
)
from .tuning import tune as run_tune


@click.command(name="tune")
@click.argument("op", required=False)
@click.option("--shape", "shape_text", help="Dims as k=v,... (e.g. m=32,n=4096).")
@click.option("--dtype", default="float32", show_default=True, help="Element type.")
@click.option(
    "--target", type=click.Choice([k.value for k in TargetKind]), default="cpu", show_default=True
)
@click.option("--trials", type=click.IntRange(min=0), default=64, show_default=True)
@db_option
@click.option("--workers", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option(
    "--strategy",
    type=click.Choice(["evolutionary", "random"]),
    default="evolutionary",
    show_default=True,
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--model", "model_spec", metavar="NAME|PATH", help="Tune a whole model as one job "
              "(a preset or a config.json) instead of OP.")  # fmt: skip
@click.option("--budget", type=int, help="Trials for the whole model job (with --model).")
@click.option("--time", "time_text", metavar="DURATION", help="Wall-time limit: 90s, 10m, 1h.")
@click.option("--phase", "phase_text", default="decode,prefill", show_default=True,
              help="Passes of the model to tune (with --model).")  # fmt: skip
@click.option("--set", "set_text", default="", metavar="DIM=V:V,...",
              help="Bucket values to tune at, e.g. b=1:4,m=4096 (with --model).")  # fmt: skip
@click.option("--tasks", "task_text", default="", metavar="NAME,...",
              help="Tune only these tasks of the model, by the names `tunefleet tasks` "
              "prints, e.g. gate_up_proj+act,lm_head (with --model).")  # fmt: skip
@click.option("--scheduler", type=click.Choice(["gradient", "round-robin"]), default="gradient",
              show_default=True, help="How tasks share the rounds (with --model).")  # fmt: skip
@click.option("--redis", "redis_url", metavar="URL", envvar="TUNEFLEET_REDIS_URL",
              help="Fleet state shared by the jobs of many machines: "
              "redis://[:password@]host:port/db (with --model).")  # fmt: skip
@click.option("--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve the job's Prometheus metrics on this port (with --model).")  # fmt: skip
@click.option("--no-pipeline", "no_pipeline", is_flag=True, help="Build each batch only after "
              "the last one was timed, instead of while it is timed (with --model).")  # fmt: skip
def tune(
    op: str | None,
    shape_text: str | None,
    dtype: str,
    target: str,
    trials: int,
    db_url: str | None,
    workers: str,
    strategy: str,
    seed: int,
    batch_size: int,
    as_json: bool,
    model_spec: str | None,
    budget: int | None,
    time_text: str | None,
    phase_text: str,
    set_text: str,
    task_text: str,
    scheduler: str,
    redis_url: str | None,
    metrics_port: int | None,
    no_pipeline: bool,
) -> None:
    """Tune OP at --shape on --target for --trials new measurements, or a whole --model."""
    if model_spec is not None:
        if op is not None or shape_text is not None:
            raise click.UsageError("give either OP --shape or --model, not both")
        from tunefleet.coordinator.job_cli import tune_model

        tune_model(
            model_spec, target=target, budget=budget, time_text=time_text, phase_text=phase_text,
            set_text=set_text, scheduler=scheduler, strategy=strategy, seed=seed,
            batch_size=batch_size, db_url=db_url, workers=workers, as_json=as_json,
            redis_url=redis_url, metrics_port=metrics_port,
            pipeline=not no_pipeline, task_text=task_text,
        )  # fmt: skip
        return
    if op is None or shape_text is None:
        raise click.UsageError("give OP and --shape (or --model MODEL)")
    redis_source = click.get_current_context().get_parameter_source("redis_url")
    if redis_url is not None and redis_source is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError("--redis coordinates model jobs: give it with --model")
    if metrics_port is not None:
        raise click.UsageError("--metrics-port serves a model job's metrics: give it with --model")
    if no_pipeline:
        raise click.UsageError("--no-pipeline is an option of model jobs: give it with --model")
    shape = parse_shape(shape_text)
    try:
        func = build_workload(op, shape, dtype, {})
    except TuneError as err:
        raise click.BadParameter(str(err), param_hint="OP/--shape/--dtype") from None
    work, nbytes = flops(func, shape), bytes_moved(func, shape)
    try:
        resolved = resolve_target(target)
    except TargetError as err:
        raise click.ClickException(str(err)) from None
    url = resolve_cli_url(db_url)
    cache = writable_dir(
        os.environ.get("TUNEFLEET_CACHE_DIR") or default_cache_dir(),
        "the kernel cache",
        "set TUNEFLEET_CACHE_DIR to a writable folder",
    )
    writable_dir(default_model_dir(), "the cost-model folder", "make ~/.cache writable")
    try:
        if as_json:
            result = run_tune(
                op, shape, dtype=dtype, target=resolved, trials=trials, db_url=url,
                workers=workers, strategy=strategy, seed=seed, batch_size=batch_size,
                cache_dir=cache,
            )  # fmt: skip
        else:
            result = _with_progress(
                op, shape, dtype, resolved, trials, url, workers, strategy, seed, batch_size,
                cache, work, nbytes,
            )  # fmt: skip
    except (
        TuneError,
        DatabaseError,
        TargetError,
        ExecutorError,
        SpaceError,
        StrategyError,
        CostModelError,
    ) as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(result.to_json_dict(), indent=2, default=str))
    else:
        _summary(result, shape_text)
    if result.trials and result.failures == result.trials:
        raise click.ClickException(_all_failed(result))


def _all_failed(result: TuneResult) -> str:
    """Why a run with no successful trial failed: its most common failure and first message."""
    text = f"all {result.trials} trials failed"
    if result.failure_kinds:
        status, count, message = result.failure_kinds[0]
        text += f"; most common: {status} ({count} of {result.trials})"
        if message:
            text += f": {message}"
    return text


def _under_load(result: TuneResult) -> str:
    """The summary's warning for trials timed while other processes held the cores."""
    return (
        f"{result.noisy} of {result.trials} trials timed under load were recorded noisy"
        " (no time kept; measured again by a later run); tune on idle cores"
    )


def _rate(ms: float | None, work: int, nbytes: int) -> str:
    if ms is None or ms <= 0:
        return "-"
    gflops, gbps = work / (ms * 1e6), nbytes / (ms * 1e6)
    return f"{gflops:.1f} GFLOP/s" if work / max(nbytes, 1) >= 4 else f"{gbps:.1f} GB/s"


def _with_progress(
    op: str, shape: dict[str, int], dtype: str, target: Target, trials: int, url: str,
    workers: str, strategy: str, seed: int, batch_size: int, cache: str, work: int, nbytes: int,
) -> TuneResult:  # fmt: skip
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    columns = (
        TextColumn(f"[bold]{op}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("failures {task.fields[failures]}"),
        TimeElapsedColumn(),
    )
    if not sys.stdout.isatty():
        return run_tune(
            op, shape, dtype=dtype, target=target, trials=trials, db_url=url, workers=workers,
            strategy=strategy, seed=seed, batch_size=batch_size, cache_dir=cache,
            on_progress=_progress_lines(op, work, nbytes),
        )  # fmt: skip
    with Bar(*columns, transient=False) as bar:
        task = bar.add_task("tune", total=trials, best="best -", rate="", failures=0)

        def update(p: Progress) -> None:
            best = f"best {p.best_ms:.4f} ms" if p.best_ms is not None else "best -"
            rate = _rate(p.best_ms, work, nbytes)
            bar.update(task, completed=p.trials_done, best=best, rate=rate, failures=p.failures)

        return run_tune(
            op, shape, dtype=dtype, target=target, trials=trials, db_url=url, workers=workers,
            strategy=strategy, seed=seed, batch_size=batch_size, cache_dir=cache,
            on_progress=update,
        )  # fmt: skip


PLAIN_PROGRESS_EVERY_S = 5.0


def _progress_lines(op: str, work: int, nbytes: int) -> Callable[[Progress], None]:
    """Progress as plain lines (for logs and pipes): the first trial, then every few seconds,
    then the last."""
    start = time.monotonic()
    last = [-PLAIN_PROGRESS_EVERY_S]

    def update(p: Progress) -> None:
        now = time.monotonic() - start
        if p.trials_done not in (1, p.trials_total) and now - last[0] < PLAIN_PROGRESS_EVERY_S:
            return
        last[0] = now
        best = "-" if p.best_ms is None else f"{p.best_ms:.4f} ms"
        click.echo(
            f"{op}: {p.trials_done}/{p.trials_total} trials, best {best} "
            f"{_rate(p.best_ms, work, nbytes)}, failures {p.failures}, {now:.0f} s"
        )

    return update


def _summary(result: TuneResult, shape_text: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f} ms"

    title = escape(f"{result.op} [{shape_text}] {result.dtype}")  # brackets are not markup
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    info = result.target
    table.add_row("target", f"{info['device']} ({info['arch']}, {info['fingerprint']})")
    table.add_row("workload", result.workload_key[:16])
    table.add_row("trials", f"{result.trials} this run, {result.total_trials} recorded")
    table.add_row("failures", str(result.failures))
    if result.noisy:
        table.add_row("under load", _under_load(result))
    table.add_row("best", ms(result.best_ms))
    table.add_row("default schedule", ms(result.default_ms))
    if result.best_ms and result.default_ms:
        table.add_row("speed-up", f"{result.default_ms / result.best_ms:.2f}x")
    table.add_row("GFLOP/s", "-" if result.gflops is None else f"{result.gflops:.2f}")
    table.add_row("GB/s", "-" if result.gbps is None else f"{result.gbps:.2f}")
    Console().print(table)
