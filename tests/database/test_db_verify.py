"""Imports and merges verify what they accept, and `db verify` cleans a poisoned database.

A record enters by import or merge only if its times could come from a measurement and its
trace replays on its workload and generates source for its target; one bad record rejects the
whole file. A record that got in before (committed straight through the store) is flagged by
`tunefleet db verify`, after which best() never returns it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_records import CPU, EPYC, real_batch, real_traces, real_workload
from records_factory import H100

from tunefleet.coordinator.cli import main
from tunefleet.database import NewRecord, RecordStore
from tunefleet.database.checks import MIN_REPEATS, implausible_timing


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["db", *args])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def source(tmp_path: Path) -> str:
    """A SQLite database of two CPU targets and two workloads, every record sound."""
    url = f"sqlite:///{tmp_path / 'source.db'}"
    with RecordStore.open(url) as store:
        for t in (CPU, EPYC):
            store.ensure_target(t)
        for i in range(2):
            store.ensure_workload(real_workload(i))
            for j, t in enumerate((CPU, EPYC)):
                store.commit(real_batch(i, t, 10, seed=i * 10 + j))
    return url


@pytest.fixture
def export(source: str, tmp_path: Path) -> Path:
    path = tmp_path / "records.jsonl"
    with RecordStore.open(source) as store:
        store.export_jsonl(path)
    return path


def edit_record(path: Path, index: int, **changes: object) -> int:
    """Change fields of the index-th record line of an export; returns its line number."""
    lines = path.read_text().splitlines()
    numbers = [n for n, line in enumerate(lines) if json.loads(line).get("type") == "record"]
    number = numbers[index]
    obj = json.loads(lines[number])
    obj.update(changes)
    lines[number] = json.dumps(obj)
    path.write_text("\n".join(lines) + "\n")
    return number + 1


def first_ok(path: Path) -> int:
    """The index (among record lines) of the first ok record of an export."""
    records = [json.loads(x) for x in path.read_text().splitlines()]
    records = [r for r in records if r.get("type") == "record"]
    return next(i for i, r in enumerate(records) if r["status"] == "ok")


def assert_rejected(capsys, path: Path, db: str, line: int, fragment: str) -> None:
    code, _, err = run(capsys, "import", str(path), "--db", db)
    message = one_line(err)
    assert code == 1 and f"{path}: line {line}: " in message and fragment in message, message
    with RecordStore.open(db) as store:
        stats = store.stats()
    assert (stats.records, stats.targets, stats.workloads) == (0, 0, 0)


def test_a_valid_export_round_trips_with_its_origin(
    capsys, source: str, export: Path, tmp_path: Path
) -> None:
    copy = f"sqlite:///{tmp_path / 'copy.db'}"
    code, out, _ = run(capsys, "import", str(export), "--db", copy)
    assert code == 0 and "imported 40 records (0 already present)" in out
    with RecordStore.open(source) as a, RecordStore.open(copy) as b:
        key = real_workload(1).key
        theirs, mine = a.best(key, EPYC.fingerprint, 3), b.best(key, EPYC.fingerprint, 3)
        assert [(r.uid, r.median_ms) for r in mine] == [(r.uid, r.median_ms) for r in theirs]
        assert all(r.origin is None for r in theirs)  # committed there
        header = json.loads(export.read_text().splitlines()[0])
        assert mine[0].origin == (
            f"import of {export.resolve()}, exported {header['exported_at']} from {a.url}"
        )
    merged = f"sqlite:///{tmp_path / 'merged.db'}"
    code, out, _ = run(capsys, "merge", source, "--db", merged)
    assert code == 0 and "merged 40 records" in out
    with RecordStore.open(merged) as store:
        [record] = store.best(real_workload(0).key, CPU.fingerprint)
        assert record.origin == f"merge from {source}"


@pytest.mark.parametrize(
    ("trace", "fragment"),
    [
        ("not json", "trace is not a valid trace (JSONDecodeError"),
        ('{"insts": []}', "trace is not a valid trace (KeyError"),
        (
            '{"decisions": [], "insts": [{"attrs": [], "inputs": ["nope"], '
            '"kind": "get_block", "outputs": [{"rv": "b0"}]}]}',
            "trace does not replay on its workload (ScheduleError",
        ),
    ],
    ids=["not_json", "no_decisions", "unknown_block"],
)
def test_an_import_with_a_broken_trace_is_rejected_whole(
    capsys, export: Path, tmp_path: Path, trace: str, fragment: str
) -> None:
    line = edit_record(export, first_ok(export), trace_json=trace, median_ms=0.001,
                       timings_ms=[0.001, 0.001, 0.001])  # fmt: skip
    assert_rejected(capsys, export, f"sqlite:///{tmp_path / 'new.db'}", line, fragment)


def test_a_trace_of_another_record_is_rejected_by_its_hash(
    capsys, export: Path, tmp_path: Path
) -> None:
    other_text, _ = real_traces(0)[-1]
    line = edit_record(export, first_ok(export), trace_json=other_text)
    assert_rejected(capsys, export, f"sqlite:///{tmp_path / 'new.db'}", line, "is not the hash")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"median_ms": 0.001}, "disagrees with the median of its 3 timings"),
        ({"median_ms": 0.0, "timings_ms": [0.0, 0.0, 0.0]}, "positive median_ms (got 0.0)"),
        (
            {"median_ms": -1.0, "timings_ms": [-1.0, -1.0, -1.0]},
            "non-negative median_ms (got -1.0)",
        ),
        ({"median_ms": 0.001, "timings_ms": [0.001]}, f"at least {MIN_REPEATS} timings (got 1)"),
        ({"median_ms": 0.5, "timings_ms": [-1.0, 0.5, 9.0]}, "timings must be positive"),
    ],
    ids=["median_disagrees", "zero", "negative", "one_repeat", "negative_repeat"],
)
def test_an_import_with_implausible_times_is_rejected_whole(
    capsys, export: Path, tmp_path: Path, changes: dict, fragment: str
) -> None:
    line = edit_record(export, first_ok(export), **changes)
    assert_rejected(capsys, export, f"sqlite:///{tmp_path / 'new.db'}", line, fragment)


def test_the_timing_check() -> None:
    def rec(status: str, timings: list[float], median: float | None) -> NewRecord:
        return NewRecord("w", "t", "{}", "h", status, timings_ms=timings, median_ms=median)

    assert implausible_timing(rec("ok", [0.5, 0.52, 0.49, 0.6], 0.51)) is None
    assert implausible_timing(rec("ok", [0.5, 0.52, 0.49, 0.6], 0.6)) is not None
    assert implausible_timing(rec("timeout", [], None)) is None
    assert "has a median" in implausible_timing(rec("run_error", [], 1.0))


def test_a_cpu_trace_filed_under_a_cuda_target_is_rejected(
    capsys, export: Path, tmp_path: Path
) -> None:
    """The trace replays, but its parallel CPU loops make no CUDA kernel."""
    lines = export.read_text().splitlines()
    lines.insert(1, json.dumps({"type": "target", **H100.to_dict()}))
    end = json.loads(lines[-1])
    lines[-1] = json.dumps({**end, "targets": end["targets"] + 1})
    export.write_text("\n".join(lines) + "\n")
    line = edit_record(export, first_ok(export), target_fingerprint=H100.fingerprint)
    assert_rejected(capsys, export, f"sqlite:///{tmp_path / 'new.db'}", line, "no cuda source")


def test_a_poisoned_database_is_cleaned_by_verify(capsys, source: str, tmp_path: Path) -> None:
    key = real_workload(0).key
    text, digest = real_traces(0)[0]
    bad_trace = text.replace('"kind": "', '"kind": "no_such_', 1)  # its first instruction
    poison = [
        NewRecord(key, CPU.fingerprint, bad_trace, "poison-1", "ok",
                  timings_ms=[0.001, 0.001, 0.001], median_ms=0.001),
        NewRecord(key, CPU.fingerprint, text, digest, "ok",
                  timings_ms=[0.9, 1.0, 1.1], median_ms=0.002),
    ]  # fmt: skip
    with RecordStore.open(source) as store:
        real_best = store.best(key, CPU.fingerprint)[0]
        bad_ids = store.commit(poison)  # straight in, as before imports were checked
        assert [r.id for r in store.best(key, CPU.fingerprint, 2)] == bad_ids
    code, out, _ = run(capsys, "verify", "--db", source)
    lines = out.strip().splitlines()
    assert code == 0 and lines[-1] == "checked 42 records: 2 invalid (2 newly flagged, 0 cleared)"
    assert (
        "unknown primitive 'no_such_" in lines[0] and f"record {bad_ids[0]} " in lines[0]
    )
    assert "disagrees with the median" in lines[1]
    with RecordStore.open(source) as store:
        assert store.best(key, CPU.fingerprint)[0] == real_best
        assert len(store.history(key, CPU.fingerprint)) == 10
        flagged = [r for r in store.history(key, CPU.fingerprint, include_invalid=True)
                   if r.invalid_reason]  # fmt: skip
        assert [r.id for r in flagged] == bad_ids
        [summary] = [p for p in store.summaries(CPU.fingerprint) if p.workload_key == key]
        assert summary.best_ms == real_best.median_ms
    code, out, _ = run(capsys, "history", key, "-t", CPU.fingerprint, "--db", source)
    assert code == 0 and out.count("INVALID: ") == 2
    code, out, _ = run(capsys, "verify", "--db", source)
    assert code == 0 and "2 invalid (0 newly flagged, 0 cleared)" in out
    # flagged records stay behind when records move on, so a merge does not reject them
    merged = f"sqlite:///{tmp_path / 'merged.db'}"
    code, out, _ = run(capsys, "merge", source, "--db", merged)
    assert code == 0 and "merged 40 records" in out


def test_a_merge_from_a_poisoned_database_is_rejected_whole(
    capsys, source: str, tmp_path: Path
) -> None:
    key = real_workload(1).key
    with RecordStore.open(source) as store:
        store.commit([NewRecord(key, EPYC.fingerprint, "{}", "poison", "ok",
                                timings_ms=[0.001] * 3, median_ms=0.001)])  # fmt: skip
    merged = f"sqlite:///{tmp_path / 'merged.db'}"
    code, _, err = run(capsys, "merge", source, "--db", merged)
    message = one_line(err)
    assert code == 1 and "trace is not a valid trace" in message and source in message
    with RecordStore.open(merged) as store:
        assert store.stats().records == 0
