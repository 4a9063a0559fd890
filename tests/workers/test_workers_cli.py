"""`tunefleet targets` and `tunefleet measure`: fingerprints, reports and one-line errors."""

from __future__ import annotations

import json

import pytest

from tunefleet import ir
from tunefleet.coordinator.cli import main
from tunefleet.workers.targets import detect_cpu, detect_targets

INFO_KEYS = {"kind", "fingerprint", "device", "arch", "details"}


def test_targets_json_lists_a_stable_cpu_fingerprint(capsys):
    assert main(["targets", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["kind"] == "cpu" and set(listed[0]) == INFO_KEYS
    assert listed[0]["fingerprint"] == detect_cpu().fingerprint == detect_cpu().fingerprint
    assert listed[0]["details"]["cores"] >= 1
    assert len(listed) == len(detect_targets())


def test_targets_text_names_each_target(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert detect_cpu().fingerprint in out and "compiler:" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["measure", "no_such_op", "--shape", "m=4"], "unknown op 'no_such_op'"),
        (["measure", "rmsnorm", "--shape", "m=x"], "'m=x' is not name=positive-int"),
        (["measure", "rmsnorm", "--shape", "m=4,q=2"], "missing n; unknown q"),
        (["measure", "rmsnorm", "--shape", "m=4,n=8", "--target", "tpu"], "'tpu' is not one of"),
    ],
)
def test_measure_usage_errors_are_one_line_and_exit_2(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_measure_reports_json(capsys, cache_dir):
    # the report, not the timing, is under test: on a busy machine the guard would say noisy
    argv = ["measure", "rmsnorm", "--shape", "m=8,n=256", "--repeats", "3", "--json"]
    argv += ["--no-noise-guard"]
    code = main([*argv, "--cache-dir", cache_dir])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["status"] == "ok" and report["max_rel_err"] < 1e-5
    assert report["median_ms"] > 0 and report["gflops"] > 0 and report["gbps"] > 0
    assert report["target"]["kind"] == "cpu" and report["workload_key"]


def test_measure_replays_the_best_trace_from_the_database(capsys, tmp_path, cache_dir):
    from tunefleet.database.records import NewRecord, TargetInfo, WorkloadInfo
    from tunefleet.database.store import RecordStore
    from tunefleet.ir.ops import get_op

    shape = {"m": 32, "n": 32, "k": 32}
    func = get_op("matmul").build(shape, "float32")
    sch = ir.Schedule(func)
    sch.split(sch.get_loops(sch.get_block("matmul"))[0], [None, 8])
    trace = sch.trace
    url = f"sqlite:///{tmp_path / 'records.db'}"
    key = ir.structural_hash(func)
    argv = ["measure", "matmul", "--shape", "m=32,n=32,k=32", "--repeats", "3", "--json"]
    argv += ["--best-from", url, "--cache-dir", cache_dir]

    with RecordStore.open(url) as store:
        target = detect_cpu()
        store.ensure_target(TargetInfo(**target.to_info()))
        store.ensure_workload(WorkloadInfo(key, "matmul", shape, "float32", func.to_json()))
    assert main(argv) == 1
    assert "no ok record for workload" in capsys.readouterr().err

    with RecordStore.open(url) as store:
        record = NewRecord(key, target.fingerprint, trace.to_json(), ir.trace_hash(trace), "ok",
                           (1.0,), 1.0)  # fmt: skip
        store.commit([record])
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "ok" and report["workload_key"] == key


def test_measure_replays_a_trace_file_and_refuses_one_that_is_not(capsys, tmp_path, cache_dir):
    from tunefleet.ir.ops import get_op

    func = get_op("matmul").build({"m": 32, "n": 32, "k": 32}, "float32")
    sch = ir.Schedule(func)
    sch.split(sch.get_loops(sch.get_block("matmul"))[0], [None, 8])
    good = tmp_path / "trace.json"
    good.write_text(sch.trace.to_json())
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a trace"}')
    argv = ["measure", "matmul", "--shape", "m=32,n=32,k=32", "--repeats", "3", "--json"]
    argv += ["--cache-dir", cache_dir]

    assert main([*argv, "--trace", str(good)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    assert main([*argv, "--trace", str(bad)]) == 2
    assert "is not a trace" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--shape", "m=4,m=8"], "'m' is given twice"),
        (["--shape", "m=4,,n=8"], "'' is not name=positive-int"),
        (["--shape", "m=4,n=8", "--timeout", "-1"], "--timeout"),
        (["--shape", "m=4,n=8", "--timeout", "0"], "--timeout"),
    ],
)
def test_malformed_shapes_and_timeouts_are_usage_errors(capsys, extra, needle):
    assert main(["measure", "rmsnorm", *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_a_failed_measurement_exits_1_with_its_status(capsys, tmp_path):
    code = main(
        ["measure", "add", "--shape", "m=8,n=8", "--cache-dir", str(tmp_path), "--timeout", "1e-6"]
    )
    out, err = capsys.readouterr()
    assert code == 1
    assert "status       timeout" in out
    assert err.strip().splitlines() == [err.strip()]
    assert err.startswith("tunefleet: error: timeout: no result after")


def test_an_unwritable_cache_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code = main(["measure", "add", "--shape", "m=8,n=8", "--cache-dir", str(blocker / "c")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "cannot write the kernel cache" in err[0]
