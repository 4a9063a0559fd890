"""`tunefleet compile` from a database where a real tuning job tuned only some tasks, and
`tunefleet run`; bad input says what is wrong in one line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runtime_models import HF_CONFIGS, tiny, write_checkpoint
from safetensors.numpy import load_file, save_file

from tunefleet.database import RecordStore
from tunefleet.runtime import RuntimeModelError, load_model, load_weights
from tunefleet.runtime.manifest import MANIFEST_NAME, read_manifest
from tunefleet.workers.targets import detect_cpu

pytestmark = pytest.mark.slow  # a real tuning job and several CLI processes

CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
BUCKET_SPEC = "b=1:4,n=8:32,m=64"


def cli(tmp: Path, *args: str, cache_dir: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `tunefleet ARGS` in a fresh process; kernels cached in `cache_dir` (shared with the
    other runtime tests, so equal kernels compile once)."""
    env = dict(os.environ, HOME=str(tmp / "home"), TUNEFLEET_CACHE_DIR=cache_dir or str(tmp / "kc"))
    env.pop("TUNEFLEET_DB_URL", None)
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, build_config) -> dict:
    """A tiny Qwen2 tuned by a real job for a few trials (decode, b=1 only), then compiled."""
    tmp = tmp_path_factory.mktemp("tuned")
    model_dir = tmp / "qwen2"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps(HF_CONFIGS["qwen2"]))
    db = f"sqlite:///{tmp / 'records.db'}"
    done = cli(tmp, "tune", "--model", str(model_dir), "--budget", "3", "--phase", "decode",
               "--set", "b=1,m=64", "--db", db, "--json",
               cache_dir=build_config.cache_dir)  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = tmp / "compiled"
    made = cli(tmp, "compile", "--model", str(model_dir), "--target", "cpu", "--db", db,
               "--out", str(out), "--buckets", BUCKET_SPEC, "--json",
               cache_dir=build_config.cache_dir)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return {"tmp": tmp, "db": db, "out": out, "report": json.loads(made.stdout),
            "model_dir": model_dir}  # fmt: skip


def test_coverage_names_the_tuned_kernels_from_the_database(tuned) -> None:
    report, fp = tuned["report"], detect_cpu().fingerprint
    kernels = report["kernels"]
    assert report["tuned"] + report["default"] == len(kernels)
    assert 1 <= report["tuned"] < len(kernels)  # a 3-trial job tunes only some tasks
    assert set(report["estimated_ms"]) == {"decode", "prefill"}
    with RecordStore.open(tuned["db"]) as store:
        for k in kernels:
            best = store.best(k["workload_key"], fp)
            if k["record_id"] is None:
                assert not best, f"{k['task']} {k['bucket']} has a record but runs the default"
            else:
                assert best and best[0].id == k["record_id"]
                assert k["median_ms"] == best[0].median_ms
    tuned_kernels = [k for k in kernels if k["record_id"] is not None]
    assert all(k["phase"] == "decode" and k["bucket"]["b"] == 1 for k in tuned_kernels)


def test_the_tuned_kernels_run_and_match_the_reference(tuned) -> None:
    manifest = read_manifest(tuned["out"])
    with_record = [(t, k) for t in manifest.tasks for k in t.kernels if k.tuned]
    defaults = {t.name: t.fallback.binary for t in manifest.tasks}
    assert any(k.binary != defaults[t.name] for t, k in with_record)  # its own binary
    model = load_model(tuned["out"])
    for task, kernel in with_record:
        dims = {s: kernel.bucket[s] for s in task.symbolic}
        assert model.choose(task, dims) == (kernel, dims)  # at its point the tuned one runs
    done = cli(tuned["tmp"], "run", str(tuned["out"]), "--random-weights", "--prompt-len", "4",
               "--gen", "16", "--batch", "1", "--check", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["max_rel_err"] <= 1e-3 and result["tokens_match"] is True
    assert len(result["tokens"][0]) == 17 and result["decode_tokens_per_s"] > 0


def test_a_model_compiled_for_another_target_is_refused(tuned, tmp_path) -> None:
    copy = tmp_path / "other"
    subprocess.run(["cp", "-r", str(tuned["out"]), str(copy)], check=True)
    data = json.loads((copy / MANIFEST_NAME).read_text())
    data["target"]["fingerprint"] = "cpu-0123456789ab"
    (copy / MANIFEST_NAME).write_text(json.dumps(data))
    done = cli(tmp_path, "run", str(copy), "--random-weights")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "was compiled for target cpu-0123456789ab" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("damage", ["missing", "shape", "dtype"])
def test_bad_checkpoints_are_one_line_errors(tmp_path, family_weights, damage) -> None:
    ckpt = write_checkpoint(family_weights["qwen2"], tmp_path / "ckpt")
    tensors = load_file(str(ckpt / "model.safetensors"))
    name = "model.layers.1.self_attn.k_proj.bias"
    if damage == "missing":
        del tensors[name]
    elif damage == "shape":
        tensors[name] = np.zeros(7, np.float32)
    else:
        tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, str(ckpt / "model.safetensors"))
    says = {"missing": "missing tensor", "shape": "has shape [7], the qwen2 config needs [32]",
            "dtype": "has dtype I32"}[damage]  # fmt: skip
    with pytest.raises(RuntimeModelError, match=re.escape(says)) as err:
        load_weights(tiny("qwen2"), ckpt)
    assert name in str(err.value) and "\n" not in str(err.value)


def test_cli_usage_errors(tuned, tmp_path) -> None:
    done = cli(tmp_path, "run", str(tuned["out"]), "--prompt-len", "4")
    assert done.returncode == 2 and "--weights PATH or --random-weights" in done.stderr
    done = cli(tmp_path, "compile", "--model", "tiny", "--out", str(tmp_path / "x"),
               "--buckets", "q=3")  # fmt: skip
    assert done.returncode == 2 and "unknown dim 'q'" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    with pytest.raises(RuntimeModelError, match="not a compiled model"):
        read_manifest(tmp_path / "nothing")
