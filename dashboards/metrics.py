"""Prometheus metrics of a job loop and of the workers' results it collects.

`JobMetrics` owns one registry and the metrics below; the job loop calls it at a few points
(start, each round's start, each trial, each round's end, the end) and `serve` exposes it in
Prometheus's text format. Workers report through the coordinator: every build and run
duration comes back inside the worker's result (`build_s`, `run_s`, the device it ran on), so
one exporter per job sees the whole fleet's work without an exporter on every Ray node.

Labels stay few and bounded: the job id (`job_id`: Prometheus keeps `job` for the scrape
job), the target kind, the status, the device name and, for
per-task gauges, the task name (`phase/task`) and its bucket. Trace hashes are never labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from tunefleet.workers.results import Status

if TYPE_CHECKING:
    from tunefleet.coordinator.job_plan import PlannedWorkload
    from tunefleet.coordinator.jobs import JobResult
    from tunefleet.tuner.task_tuner import Outcome
    from tunefleet.workers import Target

# From 10 microseconds (a small kernel's run) to 10 minutes (a large nvcc build).
DURATION_BUCKETS: tuple[float, ...] = (
    1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
)  # fmt: skip
# Kernel medians: from 1 microsecond to 1 second.
KERNEL_BUCKETS: tuple[float, ...] = (
    1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0,
)  # fmt: skip
NOT_BUILT = frozenset({"build_error"})


@dataclass(frozen=True)
class MetricInfo:
    """One metric as the docs list it: name, type, labels and meaning."""

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str


METRICS: tuple[MetricInfo, ...] = (
    MetricInfo("tunefleet_candidates_built_total", "counter", ("job_id", "target", "status"),
               "Candidates the builders finished, by build outcome (ok or build_error)."),
    MetricInfo("tunefleet_candidates_measured_total", "counter", ("job_id", "target", "status"),
               "Candidates measured, by result status (ok, run_error, timeout, wrong_result, "
               "noisy, build_error)."),
    MetricInfo("tunefleet_build_duration_seconds", "histogram", ("job_id", "target"),
               "Wall time of one candidate's build (replay, lowering, compiler)."),
    MetricInfo("tunefleet_run_duration_seconds", "histogram", ("job_id", "target", "device"),
               "Wall time of one candidate's run on its worker (load, check, time)."),
    MetricInfo("tunefleet_kernel_time_seconds", "histogram", ("job_id", "target", "device"),
               "Median time of one call of each valid candidate kernel."),
    MetricInfo("tunefleet_queue_depth", "gauge", ("job_id",),
               "Candidates of the round in flight not measured yet."),
    MetricInfo("tunefleet_leases_held", "gauge", ("job_id",),
               "(workload, target) leases the job holds."),
    MetricInfo("tunefleet_tasks", "gauge", ("job_id", "status"),
               "The job's workloads by task status."),
    MetricInfo("tunefleet_task_trials", "gauge", ("job_id", "task", "bucket"),
               "Trials measured for one workload of the job."),
    MetricInfo("tunefleet_task_best_seconds", "gauge", ("job_id", "task", "bucket"),
               "Best time so far of one workload of the job."),
    MetricInfo("tunefleet_task_default_seconds", "gauge", ("job_id", "task", "bucket"),
               "Time of the workload's untuned default schedule."),
    MetricInfo("tunefleet_task_roofline_seconds", "gauge", ("job_id", "task", "bucket"),
               "Roofline lower bound of one call of the workload on the job's target."),
    MetricInfo("tunefleet_job_budget_trials", "gauge", ("job_id",), "The job's trial budget."),
    MetricInfo("tunefleet_job_trials", "gauge", ("job_id",), "Trials the job has used."),
    MetricInfo("tunefleet_job_estimated_seconds", "gauge", ("job_id",),
               "Estimated model time: sum of weight x best over the measured workloads."),
    MetricInfo("tunefleet_job_roofline_seconds", "gauge", ("job_id",),
               "Roofline model time: sum of weight x roofline over the same workloads."),
    MetricInfo("tunefleet_job_running", "gauge", ("job_id",),
               "1 while the job's loop runs, 0 once it ended."),
)  # fmt: skip


class JobMetrics:
    """The metrics of the job loops of this process (usually one job), in their own registry.

    `serve(port)` starts the HTTP exporter; the hooks are called by `coordinator.jobs`.
    """

    def __init__(self, roofline_target: str | None = None) -> None:
        self.registry = CollectorRegistry()
        self.roofline_target = roofline_target
        self._m: dict[str, Any] = {}
        for info in METRICS:
            self._m[info.name] = _make(info, self.registry)
        self._server: Any = None
        self._targets: dict[str, str] = {}  # job id -> target kind
        self._roofline: dict[tuple[str, str, str], float] = {}  # (job, task, bucket) -> s

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Expose the registry over HTTP at `addr:port` (0: any free port); the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def close(self) -> None:
        """Stop the exporter, if one was started."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- hooks of the job loop ----------------------------------------------------------------

    def job_started(
        self, job_id: int, budget: int, target: Target, plan: Sequence[PlannedWorkload]
    ) -> None:
        """The loop took the job: its budget, and each workload's roofline bound."""
        job = str(job_id)
        target_kind = str(target.kind.value)
        self._m["tunefleet_job_budget_trials"].labels(job).set(budget)
        self._m["tunefleet_job_running"].labels(job).set(1)
        self._m["tunefleet_queue_depth"].labels(job).set(0)
        self._m["tunefleet_leases_held"].labels(job).set(0)
        self._targets[job] = target_kind
        for status in Status:  # every status is a series from the start, at 0
            self._m["tunefleet_candidates_measured_total"].labels(job, target_kind, status.value)
        for built in ("ok", "build_error"):
            self._m["tunefleet_candidates_built_total"].labels(job, target_kind, built)
        roof = self.roofline_target or roofline_name(target)
        for w, seconds in roofline_seconds(plan, roof).items():
            self._m["tunefleet_task_roofline_seconds"].labels(job, *w).set(seconds)
            self._roofline[(job, *w)] = seconds

    def round_started(self, job_id: int, candidates: int) -> None:
        """A round of `candidates` trials went to the workers."""
        self._m["tunefleet_queue_depth"].labels(str(job_id)).set(candidates)

    def leases_held(self, job_id: int, leases: int) -> None:
        """The job took a lease (for a round it is about to build): how many it holds now."""
        self._m["tunefleet_leases_held"].labels(str(job_id)).set(leases)

    def trial_done(self, job_id: int) -> None:
        """One candidate of the round in flight came back."""
        self._m["tunefleet_queue_depth"].labels(str(job_id)).dec()

    def round_finished(
        self, job_id: int, outcomes: Iterable[Outcome], leases: int, result: JobResult
    ) -> None:
        """A round ended: count its candidates by status, time them, refresh the job gauges."""
        job = str(job_id)
        target = self._targets.get(job, "")
        for o in outcomes:
            built = "build_error" if o.status in NOT_BUILT else "ok"
            self._m["tunefleet_candidates_built_total"].labels(job, target, built).inc()
            self._m["tunefleet_candidates_measured_total"].labels(job, target, o.status).inc()
            self._m["tunefleet_build_duration_seconds"].labels(job, target).observe(o.build_s)
            if o.status not in NOT_BUILT:
                self._m["tunefleet_run_duration_seconds"].labels(job, target, o.device).observe(
                    o.run_s
                )
            if o.median_ms is not None:
                self._m["tunefleet_kernel_time_seconds"].labels(job, target, o.device).observe(
                    o.median_ms / 1e3
                )
        self._m["tunefleet_queue_depth"].labels(job).set(0)
        self._m["tunefleet_leases_held"].labels(job).set(leases)
        self.progress(result)

    def progress(self, result: JobResult) -> None:
        """Set the job and per-task gauges from a progress report of the loop."""
        job = str(result.job_id)
        self._m["tunefleet_job_trials"].labels(job).set(result.trials)
        statuses: dict[str, int] = dict.fromkeys(
            ("pending", "running", "done", "failed", "cancelled"), 0
        )
        roofline = 0.0
        for t in result.tasks:
            statuses[t.status] = statuses.get(t.status, 0) + 1
            labels = (job, t.name, bucket_label(t.bucket))
            self._m["tunefleet_task_trials"].labels(*labels).set(t.trials)
            if t.best_ms is not None:
                self._m["tunefleet_task_best_seconds"].labels(*labels).set(t.best_ms / 1e3)
                roofline += t.weight * self._roofline.get(labels, 0.0)
            if t.default_ms is not None:
                self._m["tunefleet_task_default_seconds"].labels(*labels).set(t.default_ms / 1e3)
        for status, n in statuses.items():
            self._m["tunefleet_tasks"].labels(job, status).set(n)
        if result.estimated_ms is not None:
            self._m["tunefleet_job_estimated_seconds"].labels(job).set(result.estimated_ms / 1e3)
        if roofline > 0:
            self._m["tunefleet_job_roofline_seconds"].labels(job).set(roofline)

    def job_ended(self, job_id: int) -> None:
        """The loop let go of the job (done, cancelled or failed)."""
        self._m["tunefleet_job_running"].labels(str(job_id)).set(0)
        self._m["tunefleet_queue_depth"].labels(str(job_id)).set(0)
        self._m["tunefleet_leases_held"].labels(str(job_id)).set(0)


def bucket_label(bucket: Mapping[str, int]) -> str:
    """A bucket point as one label value: `b=1,m=16` (`-` for none)."""
    return ",".join(f"{k}={v}" for k, v in dict(bucket).items()) or "-"


def roofline_name(target: Target) -> str:
    """The coordinator.roofline entry for a target: `cpu`, or the GPU its device name says."""
    if target.kind.value == "cpu":
        return "cpu"
    device = target.device.lower()
    return next((name for name in ("h200", "h100", "a100") if name in device), device)


def roofline_seconds(
    plan: Sequence[PlannedWorkload], target: str
) -> dict[tuple[str, str], float]:
    """Each workload's roofline bound of one call, keyed by (task name, bucket label); empty
    when `target` has no roofline numbers (see coordinator.roofline.TARGETS)."""
    from tunefleet.coordinator.roofline import UnknownTargetError, get_target

    try:
        roof = get_target(target)
    except UnknownTargetError:
        return {}
    out = {}
    for w in plan:
        seconds = roof.seconds(w.task.flops(w.dims), w.task.nbytes(w.dims), w.task.dtype)
        out[(w.name, bucket_label(w.bucket))] = seconds
    return out


def _make(info: MetricInfo, registry: CollectorRegistry) -> Any:
    # prometheus_client adds `_total` to counters itself
    name = info.name.removesuffix("_total") if info.kind == "counter" else info.name
    if info.kind == "counter":
        return Counter(name, info.help, info.labels, registry=registry)
    if info.kind == "gauge":
        return Gauge(name, info.help, info.labels, registry=registry)
    buckets = KERNEL_BUCKETS if "kernel" in info.name else DURATION_BUCKETS
    return Histogram(name, info.help, info.labels, registry=registry, buckets=buckets)

