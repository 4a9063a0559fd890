"""`tunefleet report JOB_ID`: one self-contained HTML file with the Job dashboard's charts,
drawn by plotly from the record database, for people without Grafana.

The file inlines plotly.js once, so it opens offline. Charts: best time per task over the
job's trials, trials per task, speedup over the default schedule, the estimated model time
against its roofline bound (and each task's share of the roofline), and trial outcomes.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tunefleet.coordinator.jobs import JobConfig, JobError, JobResult, job_status, plan_job
from tunefleet.coordinator.models import ModelConfigError
from tunefleet.dashboards.metrics import bucket_label, roofline_name, roofline_seconds
from tunefleet.database import JobInfo, RecordStore
from tunefleet.workers import resolve_target
from tunefleet.workers.targets import TargetError


@dataclass(frozen=True)
class TaskCurve:
    """The best-so-far time (ms) of one workload after each of the job's trials on it."""

    label: str
    best_ms: tuple[float | None, ...]


@dataclass(frozen=True)
class JobReport:
    """Everything the report draws, read from the database."""

    job: JobInfo
    result: JobResult
    curves: tuple[TaskCurve, ...]
    outcomes: Counter[str]
    roofline_ms: dict[str, float]  # task label -> one call's roofline bound (ms)


def task_label(name: str, bucket: Any) -> str:
    """`phase/task [b=1]`, how every chart names a workload."""
    return f"{name} [{bucket_label(bucket)}]"


def collect(store: RecordStore, job_id: int) -> JobReport:
    """Read a job, its records and its roofline bounds (JobError when it does not exist)."""
    job, result = job_status(store, job_id)
    curves = []
    outcomes: Counter[str] = Counter()
    for t in result.tasks:
        if not t.trials:
            continue
        best: float | None = None
        points: list[float | None] = []
        for rec in store.history(t.workload_key, job.target_fingerprint, include_invalid=True):
            if rec.job_id != job_id:
                continue
            outcomes[rec.status] += 1
            if rec.status == "ok" and rec.median_ms is not None:
                best = rec.median_ms if best is None else min(best, rec.median_ms)
            points.append(best)
        curves.append(TaskCurve(task_label(t.name, t.bucket), tuple(points)))
    return JobReport(job, result, tuple(curves), outcomes, _roofline_ms(job))


def _roofline_ms(job: JobInfo) -> dict[str, float]:
    """Each workload's roofline bound, from the job's plan; empty when the model or target
    cannot be resolved here (the report then leaves the roofline out)."""
    try:
        config = JobConfig.from_json(job.config)
        plan = plan_job(config)
        target = resolve_target(config.target)
    except (JobError, ModelConfigError, TargetError, OSError, TypeError):
        return {}
    bounds = roofline_seconds(plan, roofline_name(target))
    return {f"{name} [{bucket}]": s * 1e3 for (name, bucket), s in bounds.items()}


def figures(report: JobReport) -> list[Any]:
    """The report's plotly figures, in page order."""
    import plotly.graph_objects as go

    res = report.result
    tuned = [t for t in res.tasks if t.trials]
    labels = [task_label(t.name, t.bucket) for t in tuned]
    figs = []

    curve = go.Figure()
    for c in report.curves:
        xs = list(range(1, len(c.best_ms) + 1))
        curve.add_trace(go.Scatter(x=xs, y=list(c.best_ms), mode="lines+markers", name=c.label))
    curve.update_layout(title="Best time per task", xaxis_title="trial of the task",
                        yaxis_title="best time (ms)", yaxis_type="log")  # fmt: skip
    figs.append(curve)

    trials = go.Figure(go.Bar(x=[t.trials for t in tuned], y=labels, orientation="h"))
    trials.update_layout(title=f"Trials per task ({res.trials} of {res.budget} budget)",
                         xaxis_title="trials")  # fmt: skip
    figs.append(trials)

    sped = [(task_label(t.name, t.bucket), t.default_ms / t.best_ms) for t in tuned
            if t.best_ms and t.default_ms]  # fmt: skip
    speedup = go.Figure(go.Bar(x=[s for _, s in sped], y=[n for n, _ in sped], orientation="h"))
    speedup.update_layout(title="Speedup over the default schedule", xaxis_title="x")
    figs.append(speedup)

    measured = [t for t in tuned if t.best_ms is not None]
    estimated = sum(t.weight * (t.best_ms or 0.0) for t in measured)
    bars = [("estimated", estimated)]
    roof = [(t, report.roofline_ms.get(task_label(t.name, t.bucket))) for t in measured]
    if measured and all(r is not None for _, r in roof):
        bars.append(("roofline", sum(t.weight * (r or 0.0) for t, r in roof)))
    model = go.Figure(go.Bar(x=[n for n, _ in bars], y=[v for _, v in bars]))
    model.update_layout(title="Model time against the roofline (measured tasks)",
                        yaxis_title="ms per pass")  # fmt: skip
    figs.append(model)

    eff = [(task_label(t.name, t.bucket), r / (t.best_ms or 1.0)) for t, r in roof if r]
    if eff:
        share = go.Figure(go.Bar(x=[e for _, e in eff], y=[n for n, _ in eff], orientation="h"))
        share.update_layout(title="Roofline efficiency per task (1 = at the roofline)",
                            xaxis_tickformat=".1%")  # fmt: skip
        figs.append(share)

    statuses = sorted(report.outcomes)
    outcome = go.Figure(go.Bar(x=statuses, y=[report.outcomes[s] for s in statuses]))
    outcome.update_layout(title="Trial outcomes", yaxis_title="trials")
    figs.append(outcome)
    for fig in figs:
        fig.update_layout(template="plotly_white", height=420, margin={"l": 220})
    return figs


def render_html(
    report: JobReport, figs: Sequence[Any] | None = None, now: datetime | None = None
) -> str:
    """The report as one HTML document with plotly.js inlined once (`figs`: its figures, if
    already drawn)."""
    res, job = report.result, report.job
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    est = "-" if res.estimated_ms is None else f"{res.estimated_ms:.4f} ms"
    head = (
        f"<h1>tunefleet job {res.job_id}: {html.escape(job.name)}</h1>"
        f"<p>model <code>{html.escape(job.model)}</code>, target "
        f"<code>{html.escape(job.target_fingerprint)}</code>, status {html.escape(res.status)}"
        f", {res.trials}/{res.budget} trials, estimated model time {est}, "
        f"{res.elapsed_s:.0f} s tuned. Generated {stamp}.</p>"
    )
    parts = []
    for i, fig in enumerate(figures(report) if figs is None else figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0),
                                 div_id=f"chart-{i}", config={"displaylogo": False}))  # fmt: skip
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>tunefleet job {res.job_id}</title>"
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}</style></head>"
        f"<body>{head}{''.join(parts)}</body></html>\n"
    )


def write_report(store: RecordStore, job_id: int, out: Any) -> int:
    """Write the report of `job_id` to the path `out`; the number of charts drawn."""
    report = collect(store, job_id)
    figs = figures(report)
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(render_html(report, figs))
    return len(figs)
