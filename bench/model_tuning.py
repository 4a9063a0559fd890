"""Whole-model tuning: how soon every task is near its best, candidates/s, latency vs roofline.

    python bench/model_tuning.py --target cuda [--budget 512] [--batch-size 16]  # one GPU box
    python bench/model_tuning.py --target cpu                                    # smoke mode

Tunes every decode task of a model (Llama-3-8B on cuda, the tests' tiny Llama on cpu) at b=1
and the default kv-length buckets, as `tunefleet tune --model` does (a model job, local
workers, a fresh SQLite database):

1. a pipelined job with budget B, then a second job of budget 3B on the same database, which
   continues from B's records (4B in all). Each task's final best is the best of the 4B
   trials; the time to converge is when the last task's best came within 5% of its final best,
   read from the per-round progress of both jobs (the second job's clock continues the first).
2. the same budget-B job unpipelined (`JobConfig.pipeline=False`) on a fresh database and a
   fresh compile cache: candidates/s per runner device with and without pipelining.
3. the estimated pass latency sum(weight x best) against the roofline floor of the same tasks
   (`coordinator.roofline`, the device named by --roofline).

Writes a markdown section with the machine and the command to --out (appended).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tunefleet.coordinator.jobs import JobConfig, JobOptions, JobResult, plan_job, start_job
from tunefleet.coordinator.roofline import get_target, shares
from tunefleet.database import RecordStore
from tunefleet.workers import BuildConfig, MeasureConfig, create_executor, resolve_target

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "coordinator" / "data" / "tiny_llama.json")
CONVERGED = 0.05  # a task is converged when its best is within 5% of the final best
DEFAULTS = {  # model, budget B, roofline device per target
    "cuda": ("llama-3-8b", 512, "h200"),
    "cpu": (TINY, 16, "cpu"),
}


@dataclass(frozen=True)
class Run:
    """One job as the bench saw it: its result, wall seconds and per-round progress
    (elapsed seconds on the bench's clock, best ms per workload key)."""

    result: JobResult
    wall_s: float
    timeline: tuple[tuple[float, Mapping[str, float]], ...]
    statuses: Mapping[str, int]  # the job's records by status (ok, noisy, ...)

    def status_text(self) -> str:
        return ", ".join(f"{n} {s}" for s, n in sorted(self.statuses.items(), key=lambda p: -p[1]))


def run_job(
    config: JobConfig, db: str, work: Path, name: str, measure: MeasureConfig | None,
    offset_s: float = 0.0,
) -> Run:  # fmt: skip
    """Run one job with its own compile cache (shared only by the continuation) and record
    the best of every workload after each round."""
    timeline: list[tuple[float, Mapping[str, float]]] = []
    start = time.monotonic()

    def progress(res: JobResult) -> None:
        best = {t.workload_key: t.best_ms for t in res.tasks if t.best_ms is not None}
        timeline.append((offset_s + time.monotonic() - start, best))
        print(f"  {name}: {res.trials}/{res.budget} trials, {time.monotonic() - start:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip

    cache = work / f"cache-{name.split('+')[0]}"
    with create_executor("local", BuildConfig(cache_dir=str(cache))) as executor:
        opts = JobOptions(workers=executor, model_dir=str(work / f"models-{name.split('+')[0]}"),
                          measure_config=measure, on_progress=progress)  # fmt: skip
        result = start_job(config, db, opts)
    wall = time.monotonic() - start
    fingerprint = resolve_target(config.target).fingerprint
    statuses: Counter[str] = Counter()
    with RecordStore.open(db) as store:
        for t in result.tasks:
            for rec in store.history(t.workload_key, fingerprint):
                if rec.job_id == result.job_id:
                    statuses[rec.status] += 1
    return Run(result, wall, tuple(timeline), dict(statuses))


def time_to_converge(
    timeline: Sequence[tuple[float, Mapping[str, float]]], final: Mapping[str, float]
) -> tuple[float | None, dict[str, float | None]]:
    """Seconds until every workload's best was within CONVERGED of `final` (None: never),
    and the same per workload."""
    per: dict[str, float | None] = {}
    for key, best in final.items():
        per[key] = next(
            (t for t, bests in timeline if bests.get(key, float("inf")) <= best * (1 + CONVERGED)),
            None,
        )
    times = list(per.values())
    return (None if None in times else max(times, default=0.0)), per  # type: ignore[type-var]


def roofline_ms(config: JobConfig, device: str, keys: set[str] | None = None) -> float:
    """The roofline floor of one pass over the job's workloads (those in `keys` when given):
    sum of weight x bound."""
    plan = [w for w in plan_job(config) if keys is None or w.workload_key in keys]
    items = [(w.task.weight, w.task.flops(w.dims), w.task.nbytes(w.dims)) for w in plan]
    dtype = plan[0].task.dtype if plan else "float32"
    return shares(items, get_target(device), dtype)[1] * 1e3


def machine(target_kind: str) -> str:
    """One line naming the machine: CPU model and cores, and the device measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    target = resolve_target(target_kind)
    return f"{cpu}, {os.cpu_count()} cores; measured on {target.device} ({target.fingerprint})"


def devices(target_kind: str) -> int:
    """Runner devices the local executor uses for the target: every matching GPU, or one CPU
    runner."""
    if target_kind == "cpu":
        return 1
    from tunefleet.workers.targets import detect_cuda

    found = detect_cuda()
    fp = resolve_target(target_kind).fingerprint
    return len([t for t in found if t.fingerprint == fp]) or len(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", choices=sorted(DEFAULTS), default="cpu")
    parser.add_argument("--model", help="preset or config.json (default: per target)")
    parser.add_argument("--budget", type=int, help="B, trials of the first job (4B in all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--strategy", default="evolutionary", choices=["evolutionary", "random"])
    parser.add_argument("--roofline", help="roofline device: h100, h200, a100, cpu")
    parser.add_argument("--out", default=str(ROOT / "bench" / "model_tuning_results.md"))
    parser.add_argument("--work", help="folder for databases and caches (default: a temp one)")
    parser.add_argument("--note", default="", help="a line added under the section's title")
    args = parser.parse_args()
    model, budget, device = DEFAULTS[args.target]
    model = args.model or model
    budget = args.budget or budget
    device = args.roofline or device
    if budget < 1 or args.batch_size < 1:
        parser.error("--budget and --batch-size must be at least 1")
    work = Path(args.work or tempfile.mkdtemp(prefix="tunefleet-model-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    command = "python bench/model_tuning.py " + " ".join(sys.argv[1:])
    measure = None  # the job's default: MeasureConfig(seed=0), noise guard on

    def config(trials: int, pipeline: bool) -> JobConfig:
        return JobConfig(model=model, phases=("decode",), sets={"b": (1,)}, budget=trials,
                         target=args.target, strategy=args.strategy, scheduler="gradient",
                         trials_per_round=args.batch_size, pipeline=pipeline,
                         patience=0)  # fmt: skip

    db = f"sqlite:///{work / 'pipelined.db'}"
    print(f"pipelined job, budget {budget}", file=sys.stderr)
    first = run_job(config(budget, True), db, work, "pipelined", measure)
    print(f"continuation, budget {3 * budget}", file=sys.stderr)
    more = run_job(config(3 * budget, True), db, work, "pipelined+4x", measure, first.wall_s)
    print(f"unpipelined job, budget {budget}", file=sys.stderr)
    plain = run_job(config(budget, False), f"sqlite:///{work / 'plain.db'}", work, "plain",
                    measure)  # fmt: skip

    final = {t.workload_key: t.best_ms for t in more.result.tasks if t.best_ms is not None}
    names = {t.workload_key: t.name for t in more.result.tasks}
    timeline = first.timeline + more.timeline
    converged, per_task = time_to_converge(timeline, final)
    n_dev = devices(args.target)
    rate_on = first.result.trials / first.wall_s / n_dev
    rate_off = plain.result.trials / plain.wall_s / n_dev
    floor = roofline_ms(config(budget, True), device)
    timed = {t.workload_key for t in more.result.tasks if t.best_ms is not None}
    floor_timed = roofline_ms(config(budget, True), device, timed)
    n_tasks, n_first = len(more.result.tasks), sum(
        t.best_ms is not None for t in first.result.tasks
    )
    est_b, est_4b = first.result.estimated_ms, more.result.estimated_ms
    untuned = [t for t in more.result.tasks if t.best_ms is None]

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {Path(model).stem} decode, b=1, {args.target}, {when}",
        "",
        *([args.note, ""] if args.note else []),
        f"Machine: {machine(args.target)}. Command: `{command}`. "
        f"{len(final)} workloads tuned, budget B = {budget} trials (4B = {4 * budget}), "
        f"batches of {args.batch_size}, {args.strategy} search, gradient task scheduler.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| time until every task is within 5% of its 4B best | "
        f"{_s(converged)} (goal <= 600 s on one H100/H200) |",
        f"| wall time of B, pipelined / unpipelined | {first.wall_s:.0f} s / "
        f"{plain.wall_s:.0f} s |",
        f"| candidates/s per {'GPU' if args.target == 'cuda' else 'runner'}, pipelined | "
        f"{rate_on:.3f} ({n_dev} device{'s' if n_dev > 1 else ''}) |",
        f"| candidates/s per {'GPU' if args.target == 'cuda' else 'runner'}, unpipelined | "
        f"{rate_off:.3f} (x{rate_on / rate_off:.2f} with pipelining) |",
        f"| records of B by status, pipelined | {first.status_text()} |",
        f"| records of B by status, unpipelined | {plain.status_text()} |",
        f"| records of the 3B continuation by status | {more.status_text()} |",
        f"| estimated pass latency sum(weight x best) over the tasks measured, after B / 4B | "
        f"{_ms(est_b)} ({n_first} of {n_tasks} tasks) / {_ms(est_4b)} ({len(timed)} of "
        f"{n_tasks}) |",
        f"| roofline floor on {device}, those {len(timed)} tasks / all | {floor_timed:.4f} ms "
        f"({_ratio(est_4b, floor_timed)} of it after 4B) / {floor:.4f} ms |",
        "",
        "| task | weight | best after 4B | reached 5% at |",
        "|---|---|---|---|",
    ]
    weights = {t.workload_key: t.weight for t in more.result.tasks}
    for key, best in sorted(final.items(), key=lambda kv: -weights[kv[0]] * kv[1]):
        lines.append(f"| {names[key]} | {weights[key]:g} | {best:.4f} ms | {_s(per_task[key])} |")
    if untuned:
        lines += [
            "",
            "Not tuned: " + ", ".join(f"{t.name} ({t.note or t.status})" for t in untuned),
        ]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    with out.open("a") as fh:
        fh.write("\n" + text)
    print(text)
    print(json.dumps({"converged_s": converged, "rate_pipelined": rate_on,
                      "rate_unpipelined": rate_off, "estimated_ms": est_4b,
                      "roofline_ms": floor}), file=sys.stderr)  # fmt: skip


def _s(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f} ms"


def _ratio(value: float | None, floor: float) -> str:
    return "-" if value is None or not floor else f"{value / floor:.1f}x"


if __name__ == "__main__":
    main()
