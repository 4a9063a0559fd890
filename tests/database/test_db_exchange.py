"""Export, import and merge: equality across backends, idempotence, all-or-nothing imports."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from records_factory import A100, CPU, H100, random_batch, workload

from tunefleet.database import DatabaseError, ImportFileError, RecordStore, TuningRecord, jsonl
from tunefleet.database.records import exchanged_fields, field_types


def fill(store: RecordStore, seed: int, targets=(H100, A100), n_workloads: int = 3) -> None:
    """Commit a reproducible mix of records over several workloads and targets."""
    for t in targets:
        store.ensure_target(t)
    for i in range(n_workloads):
        w = workload(i)
        store.ensure_workload(w)
        for j, t in enumerate(targets):
            store.commit(random_batch(w, t, 30, seed=seed * 100 + i * 10 + j))


def content(store: RecordStore) -> tuple[list, list, list]:
    """Everything that must survive a move between databases: the exchanged fields (row ids,
    job ids, origins and invalid flags are local)."""

    def key(r: TuningRecord) -> tuple:
        d = r.to_dict()
        return tuple(sorted((k, v) for k, v in d.items() if k in exchanged_fields(TuningRecord)))

    records = []
    for w in store.workloads():
        for t in store.targets():
            records.extend(key(r) for r in store.history(w.key, t.fingerprint))
    return store.targets(), store.workloads(), sorted(records, key=repr)


def test_export_then_import_gives_an_equal_database(
    db_url: str, other_db_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "records.jsonl"
    with RecordStore.open(db_url) as source, RecordStore.open(other_db_url) as dest:
        fill(source, seed=1)
        end = source.export_jsonl(path)
        assert end.records == source.stats().records == 180
        result = dest.import_jsonl(path)
        assert (result.records_added, result.records_skipped) == (180, 0)
        assert (result.targets_added, result.workloads_added) == (2, 3)
        assert content(dest) == content(source)
        again = dest.import_jsonl(path)
        assert (again.records_added, again.records_skipped) == (0, 180)
        assert dest.stats().records == 180


def test_merge_adds_the_other_database_and_is_idempotent(db_url: str, other_db_url: str) -> None:
    with RecordStore.open(db_url) as mine, RecordStore.open(other_db_url) as theirs:
        fill(mine, seed=1, targets=(H100,))
        fill(theirs, seed=2, targets=(H100, CPU), n_workloads=4)
        _, _, mine_before = content(mine)
        _, _, theirs_records = content(theirs)
        result = mine.merge_from(other_db_url)
        assert result.records_added == len(theirs_records)
        assert (result.targets_added, result.workloads_added) == (1, 1)
        targets, workloads, merged = content(mine)
        assert merged == sorted(mine_before + theirs_records, key=repr)
        assert {t.fingerprint for t in targets} == {H100.fingerprint, CPU.fingerprint}
        assert len(workloads) == 4
        assert mine.merge_from(other_db_url).records_added == 0
        w = workload(0)
        best = mine.best(w.key, H100.fingerprint, 1)[0]
        all_ok = [r for r in mine.history(w.key, H100.fingerprint) if r.status == "ok"]
        assert best.median_ms == min(r.median_ms for r in all_ok)


def test_merging_a_database_into_itself_is_refused(db_url: str) -> None:
    with RecordStore.open(db_url) as store:
        with pytest.raises(Exception, match="into itself"):
            store.merge_from(db_url)


def test_export_can_be_limited_to_one_target(db_url: str, tmp_path: Path) -> None:
    with RecordStore.open(db_url) as store:
        fill(store, seed=3)
        end = store.export_jsonl(tmp_path / "h100.jsonl", target_fingerprint=H100.fingerprint)
        assert end.targets == 1 and end.records == 90
        lines = [json.loads(x) for x in (tmp_path / "h100.jsonl").read_text().splitlines()]
        assert {x["target_fingerprint"] for x in lines if x.get("type") == "record"} == {
            H100.fingerprint
        }


def _export(tmp_path: Path) -> list[str]:
    url = f"sqlite:///{tmp_path / 'src.db'}"
    with RecordStore.open(url) as store:
        fill(store, seed=4, n_workloads=2)
        store.export_jsonl(tmp_path / "good.jsonl")
    return (tmp_path / "good.jsonl").read_text().splitlines(keepends=True)


def _damaged_files(lines: list[str]) -> dict[str, tuple[str, str]]:
    """name -> (file text, expected message fragment)."""
    header = json.loads(lines[0])
    newer = json.dumps({**header, "version": 2}) + "\n"
    middle = len(lines) // 2
    bad_status = json.loads(lines[middle])
    bad_status["status"] = "fast"
    return {
        "cut_mid_line": ("".join(lines)[:-30], "truncated"),
        "cut_at_line_boundary": ("".join(lines[:middle]), "truncated"),
        "newer_version": (newer + "".join(lines[1:]), "version 2"),
        "not_an_export": ('{"hello": 1}\n', "not a tunefleet-records file"),
        "garbage_line": ("".join(lines[:middle]) + "{oops\n" + "".join(lines[middle:]), "JSON"),
        "bad_status": (
            "".join(lines[:middle]) + json.dumps(bad_status) + "\n" + "".join(lines[middle + 1 :]),
            "status",
        ),
        "wrong_count": ("".join(lines[:middle] + lines[middle + 1 :]), "end line"),
        "empty": ("", "empty"),
        "binary": ("".join(lines[:2]) + "\udcff\n", "UTF-8"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "cut_mid_line",
        "cut_at_line_boundary",
        "newer_version",
        "not_an_export",
        "garbage_line",
        "bad_status",
        "wrong_count",
        "empty",
        "binary",
    ],
)
def test_a_damaged_import_names_the_line_and_adds_nothing(
    case: str, db_url: str, tmp_path: Path
) -> None:
    text, fragment = _damaged_files(_export(tmp_path))[case]
    path = tmp_path / f"{case}.jsonl"
    path.write_text(text, errors="surrogateescape")
    with RecordStore.open(db_url) as store:
        with pytest.raises(ImportFileError, match=fragment) as info:
            store.import_jsonl(path)
        assert f"{path}: line " in str(info.value)
        stats = store.stats()
        assert (stats.records, stats.targets, stats.workloads) == (0, 0, 0)


def test_an_export_to_a_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    with RecordStore.open(f"sqlite:///{tmp_path / 'x.db'}") as store:
        with pytest.raises(DatabaseError, match="cannot write"):
            store.export_jsonl(tmp_path / "no" / "such" / "out.jsonl")


def test_import_times_with_an_offset_are_kept_as_the_same_instant(
    db_url: str, tmp_path: Path
) -> None:
    lines = _export(tmp_path)
    shifted = []
    for line in lines:
        obj = json.loads(line)
        if obj.get("type") == "record":
            when = datetime.fromisoformat(obj["created_at"])
            obj["created_at"] = when.astimezone(
                timezone(timedelta(hours=5, minutes=30))
            ).isoformat()
        shifted.append(json.dumps(obj) + "\n")
    (tmp_path / "shifted.jsonl").write_text("".join(shifted))
    with RecordStore.open(db_url) as a, RecordStore.open(f"sqlite:///{tmp_path / 'src.db'}") as b:
        a.import_jsonl(tmp_path / "shifted.jsonl")
        assert content(a) == content(b)


# Written by `tunefleet db export` before record fields were declared once in records.py.
EXPORT_V1 = Path(__file__).parent / "data" / "export_v1.jsonl"


def test_an_older_export_imports_and_exports_to_the_same_lines(db_url: str, tmp_path: Path) -> None:
    with RecordStore.open(db_url) as store:
        # The format is what must keep working: these hand-made records (fake IR, two repeats
        # of which 3.0 is not the median) would fail the checks of a verified import.
        result = store.import_jsonl(EXPORT_V1, verify=None)
        assert (result.targets_added, result.workloads_added) == (2, 2)
        assert (result.records_added, result.records_skipped) == (5, 0)
        assert store.get_target(H100.fingerprint) == H100
        assert store.get_workload(workload(1).key) == workload(1)
        best = store.best(workload(0).key, H100.fingerprint, k=5)
        assert [(r.uid, r.median_ms, r.timings_ms) for r in best] == [
            ("aca4d52ca7504907a72f69b24539afd7", 0.25, (0.2475, 0.25, 0.255)),
            ("3630066b61064db3a43f71f36d8fbe6d", 0.5, (0.495, 0.5, 0.51)),
        ]
        assert best[0].created_at == datetime(2026, 12, 4, 16, 47, 49, 816182, tzinfo=UTC)
        cpu = store.history(workload(1).key, CPU.fingerprint)
        assert [(r.status, r.median_ms, r.job_id) for r in cpu] == [
            ("ok", 3.0, None),  # exported from a job: the job id stayed behind
            ("timeout", None, None),
        ]
        assert cpu[1].error_msg == "timeout: candidate 4 failed"
        store.export_jsonl(tmp_path / "again.jsonl")
    again = (tmp_path / "again.jsonl").read_text().splitlines()
    assert again[1:] == EXPORT_V1.read_text().splitlines()[1:]  # all but the header's time


@pytest.mark.parametrize("line_type", sorted(jsonl.LINE_TYPES))
def test_every_exchanged_field_has_a_json_reader(line_type: str) -> None:
    """A field added to a record must have a type the importer knows how to check."""
    cls = jsonl.LINE_TYPES[line_type]
    types = field_types(cls)
    assert all(types[name] in jsonl.READERS for name in exchanged_fields(cls))
