"""`tunefleet targets` and `tunefleet measure`: fingerprint this machine, measure one schedule.

Configuration from the environment is read here only (the cache directory, a Ray address)
and passed down explicitly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from tunefleet import ir
from tunefleet.ir.ops import get_op
from tunefleet.workers.builder import BuildConfig, BuildInput
from tunefleet.workers.executor import ExecutorError, MeasureInput, create_executor
from tunefleet.workers.results import MeasureConfig, MeasureResult, Problem
from tunefleet.workers.targets import (
    Target,
    TargetError,
    TargetKind,
    detect_targets,
    resolve_target,
)


def default_cache_dir() -> str:
    """$TUNEFLEET_CACHE_DIR, else ~/.cache/tunefleet/kernels."""
    return os.environ.get("TUNEFLEET_CACHE_DIR") or str(
        Path.home() / ".cache" / "tunefleet" / "kernels"
    )


def writable_dir(path: str, what: str, fix: str) -> str:
    """`path`, created if needed; a one-line ClickException naming `what` and `fix` otherwise."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise click.ClickException(f"cannot write {what} at {folder} ({reason}); {fix}") from None
    return str(folder)


@click.command(name="targets")
@click.option("--json", "as_json", is_flag=True, help="Print the targets as JSON.")
def targets(as_json: bool) -> None:
    """Detect the CPU and CUDA targets of this machine and print their fingerprints."""
    found = detect_targets()
    if as_json:
        click.echo(json.dumps([t.to_info() for t in found], indent=2, default=str))
        return
    for target in found:
        click.echo(f"{target.kind:<5} {target.fingerprint}  {target.device}  ({target.arch})")
        for key, value in target.details:
            shown = " ".join(value) if isinstance(value, tuple) else value
            click.echo(f"      {key}: {shown}")


def parse_shape(text: str) -> dict[str, int]:
    """'m=32,n=4096' -> {'m': 32, 'n': 4096}; raises BadParameter naming the bad part."""
    shape: dict[str, int] = {}
    parts = [p.strip() for p in text.split(",")]
    for part in parts if any(parts) else []:
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
            raise click.BadParameter(
                f"{part!r} is not name=positive-int (e.g. --shape m=32,n=4096)",
                param_hint="--shape",
            )
        if name.strip() in shape:
            raise click.BadParameter(
                f"{name.strip()!r} is given twice; give each dim once", param_hint="--shape"
            )
        shape[name.strip()] = int(value)
    if not shape:
        raise click.BadParameter(
            "give the op's dims, e.g. --shape m=32,n=4096", param_hint="--shape"
        )
    return shape


@click.command(name="measure")
@click.argument("op")
@click.option("--shape", "shape_text", required=True, help="Dims as k=v,... (e.g. m=32,n=4096).")
@click.option("--dtype", default="float32", show_default=True, help="Element type.")
@click.option(
    "--target",
    "target_kind",
    type=click.Choice([k.value for k in TargetKind]),
    default="cpu",
    show_default=True,
)
@click.option(
    "--trace",
    "trace_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A trace (JSON) to replay; the default schedule otherwise.",
)
@click.option(
    "--best-from",
    "best_from",
    metavar="DB_URL",
    default=None,
    help="Replay the best trace recorded for this workload and target in this database.",
)
@click.option("--workers", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--ray-address", envvar="RAY_ADDRESS", default=None, help="Ray cluster to join.")
@click.option("--repeats", default=20, show_default=True, type=click.IntRange(1, 10_000))
@click.option(
    "--timeout",
    "timeout_s",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a run may take before it is killed (> 0).",
)
@click.option("--flush-l2", is_flag=True, help="Flush the GPU's L2 before every timed launch.")
@click.option(
    "--noise-guard/--no-noise-guard",
    default=True,
    show_default=True,
    help="Re-time a measurement taken under contention, and report `noisy` if it stays so.",
)
@click.option("--cache-dir", default=None, help="Compiled-kernel cache [$TUNEFLEET_CACHE_DIR].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def measure(
    op: str,
    shape_text: str,
    dtype: str,
    target_kind: str,
    trace_file: Path | None,
    best_from: str | None,
    workers: str,
    ray_address: str | None,
    repeats: int,
    timeout_s: float,
    flush_l2: bool,
    noise_guard: bool,
    cache_dir: str | None,
    as_json: bool,
) -> None:
    """Build, check and time one schedule of OP; prints status, time, GFLOP/s, GB/s, error."""
    shape = parse_shape(shape_text)
    func = _build_workload(op, shape, dtype)
    if trace_file and best_from:
        raise click.UsageError("give either --trace or --best-from, not both")
    trace = _read_trace(trace_file) if trace_file else None
    try:
        target = resolve_target(target_kind)
    except TargetError as err:
        raise click.ClickException(str(err)) from err
    if best_from:
        trace = _best_trace(best_from, ir.structural_hash(func), target)

    cache = writable_dir(
        cache_dir or default_cache_dir(),
        "the kernel cache",
        "pass --cache-dir or set TUNEFLEET_CACHE_DIR to a writable folder",
    )
    build_config = BuildConfig(cache_dir=cache)
    config = MeasureConfig(
        repeats=repeats, timeout_s=timeout_s, flush_l2=flush_l2, guard_noise=noise_guard
    )
    item = MeasureInput(
        BuildInput(target, workload=func, trace=trace), Problem.create(op, shape, dtype), config
    )
    options: dict[str, Any] = {"address": ray_address} if workers == "ray" else {}
    try:
        with create_executor(workers, build_config, **options) as executor:
            (result,) = executor.measure_all([item])
    except ExecutorError as err:
        raise click.ClickException(str(err)) from err

    report = summarize(result, target, ir.flops(func, shape), ir.bytes_moved(func, shape))
    report["workload_key"] = ir.structural_hash(func)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        _print_report(op, shape_text, dtype, report)
    if not result.ok:
        first = next((ln.strip() for ln in result.message.splitlines() if ln.strip()), "")
        raise click.ClickException(f"{result.status.value}" + (f": {first[:200]}" if first else ""))


def summarize(result: MeasureResult, target: Target, flops: int, nbytes: int) -> dict[str, Any]:
    """The measure command's report: status, median, error, achieved GFLOP/s and GB/s."""
    seconds = result.median_ms / 1e3 if result.median_ms else None
    return {
        "status": result.status.value,
        "median_ms": result.median_ms,
        "max_rel_err": result.max_rel_err,
        "gflops": flops / seconds / 1e9 if seconds else None,
        "gbps": nbytes / seconds / 1e9 if seconds else None,
        "target": target.to_info(),
        "message": result.message,
        "build_s": result.build_s,
        "repeats": len(result.timings_ms),
        "spread": result.spread,
        "attempts": result.attempts,
        "input_sets": result.input_sets,
    }


def _build_workload(op: str, shape: dict[str, int], dtype: str) -> ir.PrimFunc:
    try:
        opdef = get_op(op)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="OP") from err
    try:
        return opdef.build(shape, dtype)
    except ValueError as err:  # bad dims, dtype or attributes
        raise click.BadParameter(str(err), param_hint="--shape/--dtype") from err


def _read_trace(path: Path) -> ir.Trace:
    try:
        return ir.Trace.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as err:
        raise click.BadParameter(f"{path} is not a trace: {err}", param_hint="--trace") from err


def _best_trace(url: str, workload_key: str, target: Target) -> str:
    """The trace JSON of the fastest ok record for (workload, target) in the database."""
    from tunefleet.database.errors import DatabaseError
    from tunefleet.database.store import RecordStore

    try:
        with RecordStore.open(url, create=False) as store:
            best = store.best(workload_key, target.fingerprint, 1)
    except DatabaseError as err:
        raise click.ClickException(str(err)) from err
    if not best:
        raise click.ClickException(
            f"no ok record for workload {workload_key[:16]} on target {target.fingerprint} "
            f"({target.device}) in that database; tune it first or drop --best-from"
        )
    return best[0].trace_json


def _print_report(op: str, shape_text: str, dtype: str, report: dict[str, Any]) -> None:
    target = report["target"]
    click.echo(f"{op} [{shape_text}] {dtype} on {target['device']} ({target['arch']})")
    click.echo(f"  status       {report['status']}")
    if report["message"]:
        click.echo(f"  message      {report['message'].splitlines()[0][:200]}")
    if report["median_ms"] is not None:
        click.echo(f"  median       {report['median_ms']:.4f} ms over {report['repeats']} repeats")
        click.echo(f"  achieved     {report['gflops']:.2f} GFLOP/s, {report['gbps']:.2f} GB/s")
    if report["max_rel_err"] is not None:
        click.echo(f"  max rel err  {report['max_rel_err']:.3g}")
    click.echo(f"  workload     {report['workload_key']}")
