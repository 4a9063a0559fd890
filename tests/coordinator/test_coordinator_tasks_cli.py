"""`tunefleet tasks`: table, JSON, errors and start-up time, through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunefleet.coordinator.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["tasks", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--model", "llama-3-8b", "--phase", "decode")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("llama-3-8b decode at b=1, n=1, m=4096: 8 tasks")
    assert lines[1].split() == ["task", "kind", "op", "shape", "weight", "FLOPs", "bytes",
                                "share"]  # fmt: skip
    assert any(line.startswith("input_norm, post_norm, final_norm") for line in lines)
    shares = [float(line.split()[-1].rstrip("%")) for line in lines[3:]]
    assert abs(sum(shares) - 100) < 1


def test_json_schema_and_totals(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--model", "tiny", "--phase", "prefill", "--set", "n=128,b=1,m=256",
                     "--json", "--target", "cpu")  # fmt: skip
    assert rc == 0
    doc = json.loads(out)
    assert doc["model"] == "tiny" and doc["phase"] == "prefill"
    assert doc["dims"] == {"b": 1, "n": 128, "m": 256}
    for t in doc["tasks"]:
        assert {"workload_key", "op", "shape", "symbolic", "buckets", "weight", "flops",
                "bytes", "kind"} <= set(t)  # fmt: skip
        assert t["kind"] in {"dense", "attention", "norm", "elementwise", "embedding"}
        assert set(t["buckets"]) == set(t["symbolic"])
    assert doc["flops_total"] == sum(t["weight"] * t["flops"] for t in doc["tasks"])
    assert abs(sum(t["share"] for t in doc["tasks"]) - 1) < 1e-4
    lm = next(t for t in doc["tasks"] if t["name"] == "lm_head")
    assert lm["shape"] == {"m": "n", "n": 1024, "k": 256}
    assert lm["flops"] == 2 * 128 * 1024 * 256


def test_both_phases_q4_and_config_path(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    cfg = {"architectures": ["Qwen2ForCausalLM"], "hidden_size": 128, "intermediate_size": 256,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 500, "torch_dtype": "float16"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rc, out, _ = run(capsys, "--model", str(tmp_path), "--quant", "q4", "--json")
    assert rc == 0
    doc = json.loads(out)
    assert doc["phase"] == "both"
    assert {t["phase"] for t in doc["tasks"]} == {"prefill", "decode"}
    assert doc["flops_total"] == sum(doc["flops_total_by_phase"].values())
    assert all(t["op"].startswith("q4_dense") for t in doc["tasks"] if t["kind"] == "dense")


@pytest.mark.parametrize(
    ("args", "rc", "needle"),
    [
        (["--model", "llama-9"], 2, "not a preset"),
        (["--model", "tiny", "--target", "tpu"], 2, "known: h100"),
        (["--model", "tiny", "--set", "q=3"], 2, "unknown dim 'q'"),
        (["--model", "tiny", "--set", "b=x"], 2, "positive integers"),
        (["--model", "tiny", "--phase", "decode", "--set", "n=4"], 2, "n must be 1"),
        (["--model", "tiny", "--phase", "prefill", "--set", "b=4"], 2, "b must be 1"),
        (["--model", "tiny", "--buckets", "m=0"], 2, "positive"),
        (["--model", "tiny", "--phase", "decode", "--buckets", "n=1:2"], 0, ""),
    ],
)
def test_errors_are_one_line(capsys: pytest.CaptureFixture[str], args: list[str], rc: int,
                             needle: str) -> None:  # fmt: skip
    got, _, err = run(capsys, *args)
    assert got == rc
    if rc:
        assert len(err.strip().splitlines()) == 1 and needle in err, err


def test_config_errors_name_file_and_key(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "hidden_size": 64}))
    rc, _, err = run(capsys, "--model", str(path))
    assert rc == 1 and str(path) in err and "intermediate_size" in err
    odd = {"architectures": ["LlamaForCausalLM"], "hidden_size": 256, "num_hidden_layers": 2,
           "intermediate_size": 688, "num_attention_heads": 4, "vocab_size": 1000}  # fmt: skip
    path.write_text(json.dumps(odd))
    rc, _, err = run(capsys, "--model", str(path), "--quant", "q4")
    assert rc == 1 and "down_proj has k=688" in err and len(err.strip().splitlines()) == 1
    path.write_text(json.dumps({"architectures": ["FalconForCausalLM"]}))
    rc, _, err = run(capsys, "--model", str(path))
    assert rc == 1 and "FalconForCausalLM" in err and "Phi3ForCausalLM" in err


def test_command_stays_light() -> None:
    """The installed command runs, and listing tasks imports none of the heavy libraries
    (Ray, XGBoost, SQLAlchemy), which is what keeps it quick; no wall-clock limit here."""
    exe = Path(sys.executable).with_name("tunefleet")
    proc = subprocess.run([str(exe), "tasks", "--model", "llama-3-8b", "--phase", "decode"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    heavy = subprocess.run(
        [sys.executable, "-c",
         "import sys; from tunefleet.coordinator.cli import main; "
         "main(['tasks', '--model', 'tiny']); "
         "print(sorted(m for m in ('ray', 'xgboost', 'sqlalchemy') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert heavy.stdout.strip().splitlines()[-1] == "[]"


def test_set_with_both_phases_gives_each_its_dims(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "--model", "tiny", "--set", "n=128,b=4,m=4096", "--json")
    assert rc == 0
    assert json.loads(out)["dims"] == {
        "prefill": {"b": 1, "n": 128, "m": 4096},
        "decode": {"b": 4, "n": 1, "m": 4096},
    }
