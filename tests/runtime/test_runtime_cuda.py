"""Compiled models on the GPU: tiny models of every family, compiled for the CUDA target with
default schedules, run prefill and 16 greedy decode steps on cupy buffers against the numpy
reference model, in fp16 (every family) and fp32 (Llama, Qwen2), at prompt lengths and
batches inside, between and beyond the bucket points."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from runtime_models import BUCKETS, HF_CONFIGS, generate_and_compare, tiny

from tunefleet.coordinator.cli import main
from tunefleet.runtime import CompileOptions, compile_model, load_model
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import read_manifest
from tunefleet.runtime.weights import random_weights
from tunefleet.workers.targets import resolve_target

pytestmark = pytest.mark.gpu

TOLERANCE = {"float32": 1e-3, "float16": 1e-2}


CASES = [(f, "float16") for f in HF_CONFIGS] + [("llama", "float32"), ("qwen2", "float32")]


@pytest.fixture(scope="module")
def cuda_models(tmp_path_factory, build_config):
    """(family, dtype) -> a model compiled for this machine's first GPU, on first use."""
    pytest.importorskip("cupy")
    target = resolve_target("cuda")
    made: dict[tuple[str, str], Path] = {}

    def get(family: str, dtype: str) -> Path:
        if (family, dtype) not in made:
            folder = tmp_path_factory.mktemp(f"cuda-{family}-{dtype}")
            cfg = replace(tiny(family), dtype=dtype)
            compile_model(CompileOptions(cfg, target, str(folder), build_config,
                                         buckets=BUCKETS, jobs=8))  # fmt: skip
            made[family, dtype] = folder
        return made[family, dtype]

    return get


@pytest.mark.parametrize(("family", "dtype"), CASES)
def test_cuda_model_runs_like_the_reference(cuda_models, family: str, dtype: str) -> None:
    folder = cuda_models(family, dtype)
    manifest = read_manifest(folder)
    assert manifest.target_kind == "cuda"
    assert all(k.launch is not None for t in manifest.tasks for k in (*t.kernels, t.fallback))
    weights = random_weights(manifest.model, seed=3)
    model = load_model(folder, weights)
    assert model.backend.kind == "cuda"
    err = generate_and_compare(model, weights, batch=2, prompt_len=5, steps=16)
    assert err <= TOLERANCE[dtype], f"{family} {dtype}: max_rel_err {err:.3g}"


@pytest.mark.parametrize(("batch", "prompt_len"), [(1, 8), (3, 20), (4, 33), (5, 1)])
def test_cuda_dispatch_inside_between_and_beyond_buckets(cuda_models, batch, prompt_len) -> None:
    """b buckets (1, 4) and n buckets (8, 32): points, sizes between them and past the last."""
    folder = cuda_models("llama", "float32")
    weights = random_weights(read_manifest(folder).model, seed=5)
    model = load_model(folder, weights)
    assert generate_and_compare(model, weights, batch, prompt_len, steps=3) <= 1e-3


def test_cuda_session_buffers_live_on_the_gpu(cuda_models) -> None:
    import cupy

    model = load_model(cuda_models("qwen2", "float32"))
    session = model.session(2, 12, 6)
    assert isinstance(session.plan.k_cache, cupy.ndarray)
    assert isinstance(model.layers[0].qkv[0], cupy.ndarray)
    logits = session.prefill(np.zeros((2, 6), dtype=np.int64))
    assert isinstance(logits, cupy.ndarray) and logits.shape == (2, 6, 100)
    assert np.isfinite(session.host(logits)).all()
    with pytest.raises(RuntimeModelError, match="longer than the maximum"):
        session.prefill(np.zeros((2, 7), dtype=np.int64))


def test_cuda_run_command_checks_against_the_reference(cuda_models, capsys) -> None:
    folder = cuda_models("mistral", "float16")
    args = ["run", str(folder), "--random-weights", "--prompt-len", "7", "--gen", "16",
            "--batch", "2", "--check", "--json"]  # fmt: skip
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out = json.loads(captured.out)
    assert out["tokens_match"] and out["max_rel_err"] <= 1e-2
    assert out["decode_tokens_per_s"] > 0 and len(out["tokens"][0]) == 17


def test_a_cuda_model_is_refused_on_another_gpu(cuda_models, tmp_path) -> None:
    folder = cuda_models("llama", "float32")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["target"]["fingerprint"] = "0000000000000000"
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RuntimeModelError, match="compile it again here"):
        load_model(tmp_path)


def test_cuda_decode_steps_replay_as_graphs_like_eager_steps(tmp_path, build_config) -> None:
    """Steps crossing the kv-length bucket at 16: the graph session captures one graph per
    bucket's kernels and gives the logits and tokens of a session without graphs."""
    pytest.importorskip("cupy")
    cfg = tiny("llama")
    buckets = {**BUCKETS, "m": (16, 64)}
    compile_model(CompileOptions(cfg, resolve_target("cuda"), str(tmp_path), build_config,
                                 buckets=buckets, jobs=8))  # fmt: skip
    model = load_model(tmp_path, random_weights(cfg, seed=7))
    eager, graphed = model.session(2, 40, 10, graphs=False), model.session(2, 40, 10)
    ids = np.random.default_rng(7).integers(0, cfg.vocab_size, (2, 10))
    tokens = eager.greedy(eager.prefill(ids)[:, -1]).copy()
    graphed.prefill(ids)
    for _ in range(24):  # kv lengths 11 to 34
        want = eager.host(eager.decode(tokens))
        got = graphed.host(graphed.decode(tokens))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
        tokens = want.argmax(-1)
    assert len(graphed.graphs) == 2 and not eager.graphs


def test_a_model_replays_its_graphs_after_another_model_is_loaded(tmp_path, build_config):
    """Loading a second model makes its backend's stream current; the first model's decode
    steps must still launch on, and be captured from, their own stream (else a graph
    holds nothing and its second replay returns the step before's logits)."""
    pytest.importorskip("cupy")
    cfg = tiny("llama")
    compile_model(CompileOptions(cfg, resolve_target("cuda"), str(tmp_path), build_config,
                                 buckets=BUCKETS, jobs=8))  # fmt: skip
    weights = random_weights(cfg, seed=5)
    first = load_model(tmp_path, weights)
    load_model(tmp_path, weights)  # the later backend
    eager, graphed = first.session(1, 20, 6, graphs=False), first.session(1, 20, 6)
    ids = np.random.default_rng(5).integers(0, cfg.vocab_size, (1, 6))
    tokens = eager.greedy(eager.prefill(ids)[:, -1]).copy()
    graphed.prefill(ids)
    for _ in range(6):
        want = eager.host(eager.decode(tokens))
        got = graphed.host(graphed.decode(tokens))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
        tokens = want.argmax(-1)
    assert graphed.graphs


def test_cuda_dense_tasks_with_a_warp_per_output_run_like_the_reference(tmp_path, build_config):
    """Hidden size 256 and intermediate 512: every dense task's default reduces over at
    least 256 elements, so each output gets a warp (the GEMV form) with its epilogue."""
    pytest.importorskip("cupy")
    cfg = replace(tiny("llama"), hidden_size=256, intermediate_size=512, head_dim=64,
                  dtype="float16")  # fmt: skip
    compile_model(CompileOptions(cfg, resolve_target("cuda"), str(tmp_path), build_config,
                                 buckets=BUCKETS, jobs=8))  # fmt: skip
    source = (tmp_path / read_manifest(tmp_path).task_for("decode", "lm_head").fallback.source)
    assert "tf_block_add" in source.read_text()  # the lanes' partial sums meet in a warp sum
    weights = random_weights(cfg, seed=11)
    err = generate_and_compare(load_model(tmp_path, weights), weights, 2, 9, steps=8)
    assert err <= TOLERANCE["float16"]
