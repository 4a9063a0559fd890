"""The job loop's metrics: a real tiny CPU job exports them, a real Prometheus scrapes the
exporter, and every PromQL expression of every Fleet and Job panel returns a series; the
`--metrics-port` option serves them from a running `tunefleet tune --model`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dash_job import MODEL, free_port, run_tiny_job

from tunefleet.coordinator.jobs import JobConfig, create_job
from tunefleet.dashboards.metrics import JobMetrics
from tunefleet.dashboards.panels import DASHBOARDS

CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
HASHLIKE = re.compile(r"[0-9a-f]{16,}")


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def _promql(base: str, expr: str) -> list[dict]:
    data = json.loads(_get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert data["status"] == "success", (expr, data)
    return data["data"]["result"]


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A real Prometheus on a free port scraping 127.0.0.1:<exporter port> every second."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not on PATH"
    exporter, port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 100ms\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: tunefleet\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter}']\n"
    )
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: "Ready" in _get(f"{base}/-/ready"), 30, "Prometheus to be ready")
        yield base, exporter
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.mark.prometheus
@pytest.mark.slow
def test_prometheus_scrapes_a_job_and_every_panel_query_returns_a_series(
    tmp_path: Path, prometheus: tuple[str, int]
) -> None:
    base, exporter = prometheus
    metrics = JobMetrics()
    metrics.serve(exporter, addr="127.0.0.1")
    try:
        _wait(lambda: _promql(base, "up") and _promql(base, "up")[0]["value"][1] == "1", 30,
              "the first scrape")  # fmt: skip
        result = run_tiny_job(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path, metrics)
        assert result.status == "done" and result.trials == 8
        job = str(result.job_id)
        ended = f'tunefleet_job_running{{job_id="{job}"}} == 0'
        _wait(lambda: bool(_promql(base, ended)), 30, "the scrape after the job's end")
        time.sleep(0.5)  # more scrapes: rates have two samples of the final counters
        for spec in (DASHBOARDS["fleet"], DASHBOARDS["job"]):
            for panel in spec.panels:
                for q in panel.queries:
                    expr = q.text.replace("$__rate_interval", "2m").replace("$job", job)
                    assert _promql(base, expr), f"{spec.uid} / {panel.title}: {expr} is empty"
        # the values say what the job did
        (trials,) = _promql(base, f'tunefleet_job_trials{{job_id="{job}"}}')
        assert float(trials["value"][1]) == 8
        (measured,) = _promql(base, "sum(tunefleet_candidates_measured_total)")
        assert float(measured["value"][1]) == 8
        per_task = _promql(base, f'tunefleet_task_trials{{job_id="{job}"}} > 0')
        assert sorted(float(s["value"][1]) for s in per_task) == [4.0, 4.0]
        best = _promql(base, f'tunefleet_task_best_seconds{{job_id="{job}"}}')
        want = {(t.name, t.best_ms) for t in result.tasks if t.best_ms is not None}
        got = {(s["metric"]["task"], float(s["value"][1]) * 1e3) for s in best}
        assert {n for n, _ in got} == {n for n, _ in want}
        for name, ms in want:
            assert any(n == name and abs(v - ms) <= 1e-9 + 1e-6 * ms for n, v in got)
        for gauge in ("tunefleet_leases_held", "tunefleet_queue_depth"):  # seen while it ran
            (peak,) = _promql(base, f'max_over_time({gauge}{{job_id="{job}"}}[5m])')
            assert float(peak["value"][1]) >= 1, gauge
        builds = _promql(base, "sum(tunefleet_build_duration_seconds_count)")
        assert float(builds[0]["value"][1]) == 8
        for series in _promql(base, '{__name__=~"tunefleet_.+"}'):
            labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
            assert not any(HASHLIKE.search(v) for v in labels.values()), series["metric"]
    finally:
        metrics.close()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["tune", "resume"])
def test_the_job_commands_serve_metrics_while_the_job_runs(tmp_path: Path, command: str) -> None:
    port = free_port()
    env = dict(os.environ, HOME=str(tmp_path / "home"), TUNEFLEET_CACHE_DIR=str(tmp_path / "kc"))
    db = f"sqlite:///{tmp_path / 'j.db'}"
    if command == "tune":
        args = ["tune", "--model", MODEL, "--phase", "decode", "--set", "b=1,m=16", "--budget",
                "8", "--batch-size", "4", "--db", db, "--metrics-port", str(port)]  # fmt: skip
    else:  # a job created without running, then run by id
        config = JobConfig(model=MODEL, phases=("decode",), sets={"b": (1,), "m": (16,)},
                           budget=8, trials_per_round=4)  # fmt: skip
        assert create_job(config, db) == 1
        args = ["job", "resume", "1", "--db", db, "--metrics-port", str(port)]
    proc = subprocess.Popen([sys.executable, "-c", CODE, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    seen = ""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                seen = _get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            except OSError:
                time.sleep(0.1)
                continue
            if 'tunefleet_job_trials{job_id="1"} 4.0' in seen:
                break  # the first round's metrics, read while the job runs on
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert 'tunefleet_job_budget_trials{job_id="1"} 8.0' in seen
    assert 'tunefleet_build_duration_seconds_count{job_id="1",target="cpu"} 4.0' in seen
    assert 'tunefleet_job_running{job_id="1"} 1.0' in seen
    assert f"metrics on http://0.0.0.0:{port}/metrics" in err


def test_a_busy_metrics_port_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-c", CODE, "tune", "--model", MODEL, "--budget", "4",
             "--db", f"sqlite:///{tmp_path / 'j.db'}", "--metrics-port", str(port)],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, HOME=str(tmp_path / "home")),
        )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(f"tunefleet: error: cannot serve metrics on port {port}")
    assert len(out.stderr.splitlines()) == 1


def test_metrics_port_needs_a_model() -> None:
    out = subprocess.run([sys.executable, "-c", CODE, "tune", "rmsnorm", "--shape", "m=4,n=8",
                          "--metrics-port", "9"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--metrics-port" in out.stderr
