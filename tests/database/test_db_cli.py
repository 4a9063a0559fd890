"""`tunefleet db ...` end to end through the console entry point: data out as text and JSON,
records moved by export/import/merge, and one clear line (no traceback) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_records import CPU, EPYC, real_batch, real_workload
from sqlalchemy.engine import make_url

from tunefleet.coordinator.cli import main
from tunefleet.database import RecordStore
from tunefleet.database.schema import head_revision


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["db", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def filled(tmp_path: Path) -> str:
    """A SQLite database with two targets and two workloads (real IR and traces)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    with RecordStore.open(url) as store:
        for t in (CPU, EPYC):
            store.ensure_target(t)
        for i in range(2):
            store.ensure_workload(real_workload(i))
            for j, t in enumerate((CPU, EPYC)):
                store.commit(real_batch(i, t, 20, seed=i * 10 + j))
    return url


def test_init_and_migrate_report_the_revision(capsys, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'r.db'}"
    head = head_revision()
    code, out, _ = run(capsys, "init", "--db", url)
    assert code == 0 and f"ready at schema revision {head}" in out
    code, out, _ = run(capsys, "migrate", "--db", url)
    assert code == 0 and f"already at schema revision {head}" in out


def test_best_prints_the_fastest_records_as_json(capsys, filled: str) -> None:
    w = real_workload(1)
    code, out, _ = run(
        capsys, "best", w.key[:10], "-t", CPU.fingerprint, "-k", "3", "--db", filled, "--json"
    )
    assert code == 0
    rows = json.loads(out)
    with RecordStore.open(filled) as store:
        expected = store.best(w.key, CPU.fingerprint, 3)
    assert [r["id"] for r in rows] == [r.id for r in expected]
    assert [r["median_ms"] for r in rows] == sorted(r["median_ms"] for r in rows)
    code, out, _ = run(capsys, "best", w.key, "-t", CPU.fingerprint, "--db", filled)
    assert code == 0 and f"{expected[0].median_ms:.6g}" in out


def test_history_list_and_stats(capsys, filled: str, monkeypatch) -> None:
    monkeypatch.setenv("TUNEFLEET_DB_URL", filled)  # read at the CLI edge
    w = real_workload(0)
    code, out, _ = run(capsys, "history", w.key, "-t", EPYC.fingerprint, "--json")
    assert code == 0 and len(json.loads(out)) == 20
    code, out, _ = run(capsys, "history", w.key, "-t", EPYC.fingerprint, "--limit", "5")
    assert code == 0 and len(out.strip().splitlines()) == 6
    code, out, _ = run(capsys, "list", "--json")
    pairs = json.loads(out)
    assert code == 0 and len(pairs) == 4 and all(p["records"] == 20 for p in pairs)
    code, out, _ = run(capsys, "list", "targets")
    assert code == 0 and CPU.fingerprint in out and EPYC.fingerprint in out
    code, out, _ = run(capsys, "stats", "--json")
    assert code == 0 and json.loads(out)["records"] == 80
    code, out, _ = run(capsys, "stats")
    assert code == 0 and "records    80" in out


def test_export_import_merge_and_prune(capsys, filled: str, tmp_path: Path) -> None:
    dump = tmp_path / "out.jsonl"
    code, out, _ = run(capsys, "export", str(dump), "--db", filled)
    assert code == 0 and "wrote 80 records" in out
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    code, out, _ = run(capsys, "import", str(dump), "--db", copy)
    assert code == 0 and "imported 80 records (0 already present)" in out
    merged = f"sqlite:///{tmp_path / 'merged.db'}"
    code, out, _ = run(capsys, "merge", filled, "--db", merged)
    assert code == 0 and "merged 80 records" in out
    code, out, _ = run(capsys, "merge", copy, "--db", merged)
    assert code == 0 and "merged 0 records (80 already present)" in out
    code, out, _ = run(capsys, "prune", "-k", "2", "--db", merged)
    assert code == 0 and "would delete 72 records" in out
    code, out, _ = run(capsys, "prune", "-k", "2", "--yes", "--db", merged)
    assert code == 0 and "deleted 72 records" in out
    code, out, _ = run(capsys, "stats", "--json", "--db", merged)
    assert json.loads(out)["records"] == 8


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_bad_input_gives_one_line(capsys, filled: str, tmp_path: Path) -> None:
    w = real_workload(0)
    code, _, err = run(capsys, "best", w.key, "--db", filled)
    assert code == 2 and "--target" in _one_line(err)
    code, _, err = run(capsys, "best", "ffffffffffff", "-t", CPU.fingerprint, "--db", filled)
    assert code == 2 and "no workload" in _one_line(err)
    code, _, err = run(capsys, "stats", "--db", str(tmp_path / "missing.db"))
    assert code == 1 and "db init" in _one_line(err)
    code, _, err = run(capsys, "stats", "--db", "postgresql://bob:hunter2@127.0.0.1:1/x")
    line = _one_line(err)
    assert code == 1 and "cannot reach" in line and "hunter2" not in line
    broken = tmp_path / "broken.jsonl"
    run(capsys, "export", str(broken), "--db", filled)
    broken.write_text(broken.read_text()[:-40])
    code, _, err = run(capsys, "import", str(broken), "--db", filled)
    assert code == 1 and "truncated" in _one_line(err)
    code, _, err = run(capsys, "prune", "-k", "0", "--db", filled)
    assert code == 2 and _one_line(err)


def test_jobs_are_listed(capsys, filled: str) -> None:
    with RecordStore.open(filled) as store:
        job = store.create_job("decode sweep", "llama-3-8b", CPU.fingerprint, 500)
    code, out, _ = run(capsys, "list", "jobs", "--json", "--db", filled)
    assert code == 0
    [row] = json.loads(out)
    assert (row["id"], row["status"], row["target"]) == (job, "pending", CPU.fingerprint)


@pytest.mark.postgres
def test_postgres_by_url_with_the_password_masked(capsys, pg_schema_url: str) -> None:
    password = make_url(pg_schema_url).password
    code, out, err = run(capsys, "init", "--db", pg_schema_url)
    assert code == 0 and f"revision {head_revision()}" in out
    code, out, err = run(capsys, "stats", "--db", pg_schema_url)
    assert code == 0 and "postgresql" in out and "***" in out
    assert password not in out + err


def test_export_does_not_overwrite_without_force(capsys, filled: str, tmp_path: Path) -> None:
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    code, _, err = run(capsys, "export", str(out), "--db", filled)
    assert code == 1 and "--force" in _one_line(err)
    assert out.read_text() == "precious\n"
    code, _, _ = run(capsys, "export", str(out), "--db", filled, "--force")
    assert code == 0 and out.read_text() != "precious\n"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql+asyncpg://u:secret@localhost/x", "asyncio driver 'asyncpg'"),
        ("postgresql+pg8000://u:secret@localhost/x", "driver 'pg8000'"),
        ("postgresql+psycopg://a:secret@@:::/", "not a database URL"),
    ],
)
def test_bad_urls_give_one_line_without_the_password(capsys, url: str, needle: str) -> None:
    code, _, err = run(capsys, "init", "--db", url)
    line = _one_line(err)
    assert code == 1 and needle in line and "secret" not in line


def test_a_sqlite_path_under_a_file_gives_one_line(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, _, err = run(capsys, "init", "--db", str(blocker / "sub" / "r.db"))
    assert code == 1 and "cannot create the folder" in _one_line(err)
