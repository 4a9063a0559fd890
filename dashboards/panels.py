"""The panels of the Fleet, Job and Records dashboards as data: title, chart kind, unit and
the PromQL or SQL behind each.

The Grafana JSON (`grafana_json.py`) is generated from these, and the tests run every query
against a real Prometheus and a real PostgreSQL, so a panel cannot name a metric or a column
that does not exist. PromQL may use Grafana's `$job` and `$__rate_interval`; SQL uses no
Grafana macros, so it runs as written.
"""

from __future__ import annotations

from dataclasses import dataclass

PROMETHEUS_UID = "tunefleet-prometheus"
POSTGRES_UID = "tunefleet-postgres"
PROMETHEUS_TYPE = "prometheus"
POSTGRES_TYPE = "grafana-postgresql-datasource"

OK_RECORD = "r.status = 'ok' AND r.invalid_reason IS NULL"


@dataclass(frozen=True)
class Query:
    """One query of a panel: PromQL (with a legend template) or SQL."""

    text: str
    legend: str = ""


@dataclass(frozen=True)
class PanelSpec:
    """One panel: `kind` is a Grafana panel type (timeseries, stat, bargauge, table)."""

    title: str
    kind: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    width: int = 12
    height: int = 8


@dataclass(frozen=True)
class DashboardSpec:
    """A dashboard: uid, title, its datasource (`prometheus` or `postgres`) and its panels."""

    uid: str
    title: str
    source: str
    panels: tuple[PanelSpec, ...]
    job_variable: bool = False


def _p(expr: str, legend: str = "") -> Query:
    return Query(expr, legend)


RATE = "$__rate_interval"

FLEET = DashboardSpec(
    uid="tunefleet-fleet",
    title="tunefleet / Fleet",
    source="prometheus",
    panels=(
        PanelSpec("Jobs running", "stat", "none", (_p("sum(tunefleet_job_running)"),),
                  "Job loops exporting metrics now.", width=6, height=4),
        PanelSpec("Devices measuring", "stat", "none",
                  (_p("count(count by (device) (tunefleet_run_duration_seconds_count))"),),
                  "Distinct devices (CPUs, GPUs) whose workers returned results.",
                  width=6, height=4),
        PanelSpec("Queue depth", "stat", "none", (_p("sum(tunefleet_queue_depth)"),),
                  "Candidates sent to workers and not back yet.", width=6, height=4),
        PanelSpec("Leases held", "stat", "none", (_p("sum(tunefleet_leases_held)"),),
                  "(workload, target) leases held by all jobs.", width=6, height=4),
        PanelSpec("Candidates measured per second", "timeseries", "ops",
                  (_p(f"sum by (status) (rate(tunefleet_candidates_measured_total[{RATE}]))",
                      "{{status}}"),),
                  "Measured candidates by result status."),
        PanelSpec("Failures by status", "timeseries", "ops",
                  (_p("sum by (status) (rate(tunefleet_candidates_measured_total"
                      f'{{status!="ok"}}[{RATE}]))', "{{status}}"),
                   _p(f"sum by (status) (rate(tunefleet_candidates_built_total[{RATE}]))",
                      "built {{status}}")),
                  "Build errors, run errors, timeouts, wrong results, noisy timings."),
        PanelSpec("Build duration", "timeseries", "s",
                  (_p("histogram_quantile(0.5, sum by (le) "
                      f"(rate(tunefleet_build_duration_seconds_bucket[{RATE}])))", "p50"),
                   _p("histogram_quantile(0.95, sum by (le) "
                      f"(rate(tunefleet_build_duration_seconds_bucket[{RATE}])))", "p95")),
                  "Replay, lowering and compiler time of one candidate."),
        PanelSpec("Run duration", "timeseries", "s",
                  (_p("histogram_quantile(0.5, sum by (le, device) "
                      f"(rate(tunefleet_run_duration_seconds_bucket[{RATE}])))",
                      "p50 {{device}}"),
                   _p("histogram_quantile(0.95, sum by (le, device) "
                      f"(rate(tunefleet_run_duration_seconds_bucket[{RATE}])))",
                      "p95 {{device}}")),
                  "Load, check and timing of one candidate on its worker."),
        PanelSpec("Candidates per device per second", "timeseries", "ops",
                  (_p(f"sum by (device) (rate(tunefleet_run_duration_seconds_count[{RATE}]))",
                      "{{device}}"),),
                  "How busy each device's workers are."),
        PanelSpec("Queue and leases by job", "timeseries", "none",
                  (_p("sum by (job_id) (tunefleet_queue_depth)", "queue job {{job_id}}"),
                   _p("sum by (job_id) (tunefleet_leases_held)", "leases job {{job_id}}")),
                  "Per job: candidates in flight and leases held."),
    ),
)  # fmt: skip

JOB = 'job_id="$job"'

JOB_DASHBOARD = DashboardSpec(
    uid="tunefleet-job",
    title="tunefleet / Job",
    source="prometheus",
    job_variable=True,
    panels=(
        PanelSpec("Budget used", "stat", "percentunit",
                  (_p(f"tunefleet_job_trials{{{JOB}}} / tunefleet_job_budget_trials{{{JOB}}}"),),
                  "Trials measured out of the job's budget.", width=6, height=4),
        PanelSpec("Trials", "stat", "none", (_p(f"tunefleet_job_trials{{{JOB}}}"),),
                  "Trials the job has measured.", width=6, height=4),
        PanelSpec("Estimated model time", "stat", "s",
                  (_p(f"tunefleet_job_estimated_seconds{{{JOB}}}"),),
                  "Sum of weight x best over the measured workloads.", width=6, height=4),
        PanelSpec("Tasks by status", "stat", "none",
                  (_p(f"sum by (status) (tunefleet_tasks{{{JOB}}})", "{{status}}"),),
                  "The job's workloads by status.", width=6, height=4),
        PanelSpec("Best time per task", "timeseries", "s",
                  (_p(f"tunefleet_task_best_seconds{{{JOB}}}", "{{task}} [{{bucket}}]"),),
                  "Best-so-far time of every workload of the job."),
        PanelSpec("Trials per task", "bargauge", "none",
                  (_p(f"tunefleet_task_trials{{{JOB}}}", "{{task}} [{{bucket}}]"),),
                  "Trials measured per workload."),
        PanelSpec("Speedup over the default schedule", "bargauge", "x",
                  (_p(f"tunefleet_task_default_seconds{{{JOB}}} / "
                      f"tunefleet_task_best_seconds{{{JOB}}}", "{{task}} [{{bucket}}]"),),
                  "Default schedule time / best time, per workload."),
        PanelSpec("Model time against the roofline", "timeseries", "s",
                  (_p(f"tunefleet_job_estimated_seconds{{{JOB}}}", "estimated"),
                   _p(f"tunefleet_job_roofline_seconds{{{JOB}}}", "roofline")),
                  "Estimated model time and its roofline bound over the same workloads."),
        PanelSpec("Roofline efficiency per task", "bargauge", "percentunit",
                  (_p(f"tunefleet_task_roofline_seconds{{{JOB}}} / "
                      f"tunefleet_task_best_seconds{{{JOB}}}", "{{task}} [{{bucket}}]"),),
                  "Roofline bound / best time, per workload (1 = at the roofline)."),
        PanelSpec("Kernel time of valid candidates", "timeseries", "s",
                  (_p("histogram_quantile(0.5, sum by (le) "
                      f"(rate(tunefleet_kernel_time_seconds_bucket{{{JOB}}}[{RATE}])))",
                      "p50"),),
                  "Median call time of the job's valid candidates."),
    ),
)  # fmt: skip

RECORDS = DashboardSpec(
    uid="tunefleet-records",
    title="tunefleet / Records",
    source="postgres",
    panels=(
        PanelSpec("Records per target and day", "timeseries", "none", (Query(
            "SELECT date_trunc('day', r.created_at) AS time, t.device AS target,\n"
            "       count(*) AS records\n"
            "FROM tuning_records r JOIN targets t ON t.id = r.target_id\n"
            "GROUP BY 1, 2\nORDER BY 1"),),
            "Trials recorded per day on each target.", width=24),
        PanelSpec("Best kernels per model", "table", "none", (Query(
            "SELECT j.model, w.op, w.shape::text AS shape, t.device AS target,\n"
            "       min(r.median_ms) AS best_ms, count(*) AS valid_records\n"
            "FROM tasks k\n"
            "JOIN jobs j ON j.id = k.job_id\n"
            "JOIN workloads w ON w.id = k.workload_id\n"
            "JOIN targets t ON t.id = j.target_id\n"
            "JOIN tuning_records r ON r.workload_id = k.workload_id "
            "AND r.target_id = j.target_id\n"
            f"WHERE {OK_RECORD}\n"
            "GROUP BY j.model, w.op, w.shape::text, t.device\n"
            "ORDER BY j.model, best_ms"),),
            "The fastest valid record of every workload of every model's jobs.", width=24,
            height=10),
        PanelSpec("Coverage of each model's tasks", "table", "none", (Query(
            "WITH tuned AS (\n"
            "  SELECT DISTINCT r.workload_id, r.target_id FROM tuning_records r\n"
            f"  WHERE {OK_RECORD})\n"
            "SELECT j.model, t.device AS target,\n"
            "       count(DISTINCT k.workload_id) AS tasks,\n"
            "       count(DISTINCT u.workload_id) AS tuned,\n"
            "       round(100.0 * count(DISTINCT u.workload_id)\n"
            "             / count(DISTINCT k.workload_id), 1) AS coverage_pct\n"
            "FROM tasks k\n"
            "JOIN jobs j ON j.id = k.job_id\n"
            "JOIN targets t ON t.id = j.target_id\n"
            "LEFT JOIN tuned u ON u.workload_id = k.workload_id AND u.target_id = j.target_id\n"
            "GROUP BY j.model, t.device\n"
            "ORDER BY j.model"),),
            "Workloads of a model with at least one valid record on the job's target."),
        PanelSpec("Records by status", "table", "none", (Query(
            "SELECT t.device AS target, r.status, count(*) AS records\n"
            "FROM tuning_records r JOIN targets t ON t.id = r.target_id\n"
            "GROUP BY 1, 2\nORDER BY 1, 3 DESC"),),
            "Every trial by its result status, per target."),
    ),
)  # fmt: skip

DASHBOARDS: dict[str, DashboardSpec] = {"fleet": FLEET, "job": JOB_DASHBOARD, "records": RECORDS}
