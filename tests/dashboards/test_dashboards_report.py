"""`tunefleet report`: one self-contained HTML file from a real tiny job, opened in headless
Chromium; the screenshot's pixels show the charts drawn."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dash_job import run_tiny_job
from PIL import Image

CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
TRACE_BLUE = (99, 110, 250)  # plotly's first trace colour, #636efa


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=env, timeout=180)  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """A tiny job's database, its report file and the job id."""
    work = tmp_path_factory.mktemp("report")
    db = f"sqlite:///{work / 'jobs.db'}"
    result = run_tiny_job(db, work)
    out = work / "report.html"
    done = _cli(work, "report", str(result.job_id), "--out", str(out), "--db", db)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{out}: job {result.job_id}, 6 charts"
    return out, db, result.job_id


def test_the_report_is_one_self_contained_file(report) -> None:
    out, _, job_id = report
    page = out.read_text()
    assert f"tunefleet job {job_id}" in page
    assert not re.search(r"<script[^>]+src=", page), "scripts must be inlined"
    assert page.count("Plotly.newPlot") == 6
    assert len(page) > 1_000_000  # plotly.js itself is inlined
    for title in ("Best time per task", "Trials per task", "Speedup over the default schedule",
                  "Model time against the roofline", "Trial outcomes"):  # fmt: skip
        assert title in page


@pytest.mark.chromium
@pytest.mark.slow
def test_chromium_draws_the_charts(report, tmp_path: Path) -> None:
    out, _, _ = report
    shot = tmp_path / "report.png"
    binary = shutil.which("chromium")
    assert binary
    run = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,3000",
         "--virtual-time-budget=10000", f"--screenshot={shot}", out.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.exists(), run.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    width, height = image.size
    pixels = image.load()
    rows_with_bars = []
    for y in range(height):
        blue = sum(1 for x in range(0, width, 2) if _near(pixels[x, y], TRACE_BLUE))
        if blue >= 20:
            rows_with_bars.append(y)
    bands = _bands(rows_with_bars)
    # each bar chart draws wide blue bars; the curve chart draws a blue line
    assert len(bands) >= 4, f"blue trace pixels in {len(bands)} separate bands: {bands}"
    assert len(rows_with_bars) > 300, "the bars cover too few rows to be drawn charts"
    lines = sum(1 for y in range(height) for x in range(0, width, 4) if pixels[x, y] != (255,) * 3)
    assert lines > 10_000


def _near(pixel: tuple[int, int, int], colour: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(a - b) <= tol for a, b in zip(pixel, colour, strict=True))


def _bands(rows: list[int], gap: int = 40) -> list[tuple[int, int]]:
    """Runs of rows with no gap wider than `gap` between them."""
    bands: list[tuple[int, int]] = []
    for y in rows:
        if bands and y - bands[-1][1] <= gap:
            bands[-1] = (bands[-1][0], y)
        else:
            bands.append((y, y))
    return bands


def test_report_errors_are_one_line(report, tmp_path: Path) -> None:
    _, db, _ = report
    missing = _cli(tmp_path, "report", "999", "--out", str(tmp_path / "r.html"), "--db", db)
    assert missing.returncode == 1 and missing.stderr.strip() == (
        "tunefleet: error: job 999 does not exist"
    )
    _, db, job_id = report
    bad = _cli(tmp_path, "report", str(job_id), "--out", str(tmp_path / "no" / "r.html"),
               "--db", db)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("tunefleet: error: cannot write")
    assert len(bad.stderr.splitlines()) == 1


def test_a_model_that_no_longer_resolves_leaves_the_roofline_out(report, tmp_path: Path) -> None:
    from tunefleet.database import RecordStore

    _, db, job_id = report
    copy = tmp_path / "copy.db"
    shutil.copy(db.removeprefix("sqlite:///"), copy)
    with RecordStore.open(f"sqlite:///{copy}") as store:
        job = store.get_job(job_id)
        store.set_job_config(job_id, {**job.config, "model": str(tmp_path / "gone.json")})
    out = tmp_path / "r.html"
    done = _cli(tmp_path, "report", str(job_id), "--out", str(out), "--db", f"sqlite:///{copy}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("5 charts")
    page = out.read_text()
    assert "Roofline efficiency" not in page and "Best time per task" in page
