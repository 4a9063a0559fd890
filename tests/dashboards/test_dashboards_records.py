"""Every SQL query of the Records dashboard runs against a real PostgreSQL filled by a real
tiny CPU job and returns rows that agree with the job."""

from __future__ import annotations

from pathlib import Path

import pytest
from dash_job import MODEL, run_tiny_job
from sqlalchemy import create_engine, text

from tunefleet.dashboards.panels import RECORDS
from tunefleet.workers import resolve_target


@pytest.mark.postgres
@pytest.mark.slow
def test_every_records_panel_query_returns_rows_from_a_real_job(
    tmp_path: Path, postgres_url: str
) -> None:
    result = run_tiny_job(postgres_url, tmp_path)
    assert result.status == "done"
    tuned = {t.name: t for t in result.tasks if t.best_ms is not None}
    assert len(tuned) == 2
    device = resolve_target("cpu").device
    engine = create_engine(postgres_url)
    rows = {}
    try:
        with engine.connect() as conn:
            for panel in RECORDS.panels:
                (query,) = panel.queries
                got = conn.execute(text(query.text)).mappings().all()
                assert got, f"{panel.title} returned no rows"
                rows[panel.title] = got
    finally:
        engine.dispose()
    per_day = rows["Records per target and day"]
    assert sum(r["records"] for r in per_day if r["target"] == device) >= result.trials
    best = [r for r in rows["Best kernels per model"] if r["model"] == MODEL]
    assert {r["target"] for r in best} == {device}
    assert len(best) >= len(tuned)
    fastest = min(r["best_ms"] for r in best)
    assert fastest <= min(t.best_ms for t in tuned.values())
    (cover,) = [r for r in rows["Coverage of each model's tasks"]
                if r["model"] == MODEL and r["target"] == device]  # fmt: skip
    assert cover["tasks"] >= len(result.tasks) and cover["tuned"] >= len(tuned)
    assert 0 < float(cover["coverage_pct"]) <= 100
    statuses = {(r["target"], r["status"]) for r in rows["Records by status"]}
    assert (device, "ok") in statuses
