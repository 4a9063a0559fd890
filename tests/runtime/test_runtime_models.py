"""Tiny models of every supported family compile, load real safetensors checkpoints and run
prefill and 16 greedy decode steps against the numpy reference model (fp32).

Kernels run on one OpenMP thread here (`threads=1`): on a machine whose cores other processes
keep busy, every parallel region waits at its barrier; test_runtime_cli runs them on every
core."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from runtime_models import (
    BUCKETS,
    HF_CONFIGS,
    generate_and_compare,
    tiny,
    write_checkpoint,
)
from safetensors.numpy import load_file

from tunefleet.coordinator.graph import Quant
from tunefleet.runtime import CompileOptions, compile_model, load_model, load_weights
from tunefleet.runtime.engine import effective_weights
from tunefleet.runtime.manifest import MANIFEST_NAME, read_manifest
from tunefleet.runtime.quant import quantize_q4
from tunefleet.runtime.weights import random_weights, save_checkpoint
from tunefleet.workers.targets import detect_cpu

STEPS = 16


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, build_config) -> dict[str, Path]:
    """family -> a compiled model folder (default schedules: no database)."""
    out = {}
    target = detect_cpu()
    for family in HF_CONFIGS:
        folder = tmp_path_factory.mktemp(f"model-{family}")
        compile_model(CompileOptions(tiny(family), target, str(folder), build_config,
                                     buckets=BUCKETS))  # fmt: skip
        out[family] = folder
    return out


@pytest.mark.parametrize("family", list(HF_CONFIGS))
def test_family_checkpoint_runs_like_the_reference(family, compiled, family_weights, tmp_path):
    weights = family_weights[family]
    shards = 2 if family == "llama" else 1  # one sharded checkpoint with its index
    ckpt = write_checkpoint(weights, tmp_path / "ckpt", shards)
    loaded = load_weights(tiny(family), ckpt)
    assert set(loaded.tensors) == set(weights.tensors)
    for name, arr in weights.tensors.items():  # fused and tied tensors come back split
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)
    model = load_model(compiled[family], loaded, threads=1)
    assert ctypes.CDLL(ctypes.util.find_library("gomp")).omp_get_max_threads() == 1
    err = generate_and_compare(model, loaded, batch=2, prompt_len=5, steps=STEPS)
    assert err <= 1e-3


def test_manifest_is_versioned_plain_json(compiled) -> None:
    folder = compiled["qwen2"]
    data = json.loads((folder / MANIFEST_NAME).read_text())
    assert data["format"] == "tunefleet.compiled-model" and data["version"] == 3
    assert data["model"]["qkv_bias"] is True and data["target"]["fingerprint"]
    manifest = read_manifest(folder)
    assert {t.phase for t in manifest.tasks} == {"decode", "prefill"}
    for task in manifest.tasks:
        assert task.kernels and all(k.record_id is None for k in task.kernels)
        for k in (*task.kernels, task.fallback):
            assert (folder / k.binary).is_file() and (folder / k.source).is_file()
            assert k.target_fingerprint == manifest.target_fingerprint
    assert not list(folder.rglob("*.pkl")) and not list(folder.rglob("*.pickle"))


def test_a_decode_step_allocates_no_buffer(compiled, family_weights) -> None:
    """Steps neither keep nor briefly take memory the size of a buffer: the peak traced
    memory of four decode steps (Python's own objects included) stays below half the cache
    prefix that each step reads."""
    model = load_model(compiled["llama"], family_weights["llama"], threads=1)
    session = model.session(batch=3, max_len=512, max_prompt=400)
    logits = session.prefill(np.zeros((3, 400), dtype=np.int64))  # steps see m > 400
    tok = session.greedy(logits[:, -1]).copy()
    session.decode(tok)  # first call per shape loads kernels and runs the guard
    # a step's cache prefix (m > 400 of 512 positions) of one layer is 3 x 2 x 400 x 16
    # floats, 154 kB, so a copy of it would show
    prefix_bytes = session.plan.k_cache[0].nbytes * 400 // 512
    numpy_domain = [tracemalloc.DomainFilter(True, np.lib.tracemalloc_domain)]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot().filter_traces(numpy_domain)
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(4):
            tok = session.greedy(session.decode(tok))
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot().filter_traces(numpy_domain)
    finally:
        tracemalloc.stop()
    kept = sum(s.size_diff for s in after.compare_to(before, "filename"))
    assert kept <= 0, f"decode steps kept {kept} bytes of numpy buffers"
    assert peak - start < prefix_bytes // 2, f"a step took {peak - start} bytes at its peak"
    # position-major: layers, max_len, batch, kv, d; the staging holds one prompt, key-major
    assert session.plan.k_cache.shape == (2, 512, 3, 2, 16)
    assert session.plan.k_stage.size == 2 * 400 * 16


def test_q4_weights_are_quantised_at_load_and_run_like_the_reference(
    tmp_path, build_config, family_weights
) -> None:
    weights = family_weights["qwen2"]
    compile_model(CompileOptions(tiny("qwen2"), detect_cpu(), str(tmp_path), build_config,
                                 quant=Quant.Q4, buckets=BUCKETS))  # fmt: skip
    model = load_model(tmp_path, weights, threads=1)
    qweight, scales = model.layers[0].gate_up
    assert qweight.dtype == np.uint32 and scales.dtype == np.float16
    assert qweight.shape == (2, 96, 64 // 8) and scales.shape == (2, 96, 64 // 32)
    effective = effective_weights(weights, "q4")
    lost = np.abs(effective["layers.0.down"] - weights["layers.0.down"])
    assert 0 < lost.max() <= np.abs(weights["layers.0.down"]).max() / 14 + 1e-6  # half a step
    assert generate_and_compare(model, effective, batch=1, prompt_len=6, steps=STEPS) <= 1e-3


def test_quantize_q4_packs_nibbles_as_the_kernels_read_them() -> None:
    w = np.zeros((1, 32), np.float32)
    w[0, :8] = [7, -7, 0, 1, -1, 3.5, 2, -6.5]  # scale 1: codes are value + 8
    qweight, scales = quantize_q4(w)
    assert scales.tolist() == [[1.0]]
    expected = [15, 1, 8, 9, 7, 12, 10, 2]  # 3.5 and -6.5 round half to even
    assert int(qweight[0, 0]) == sum(c << (4 * j) for j, c in enumerate(expected))
    assert int(qweight[0, 1]) == 0x88888888


@pytest.mark.parametrize("family", ["phi3", "gemma"])
def test_save_checkpoint_writes_what_load_weights_reads(family, family_weights, tmp_path):
    weights = family_weights[family]
    folder = save_checkpoint(weights, tmp_path)
    names = set(load_file(str(folder / "model.safetensors")))
    assert ("model.layers.0.self_attn.qkv_proj.weight" in names) == (family == "phi3")
    assert ("lm_head.weight" in names) == (not weights.config.tie_embeddings)
    loaded = load_weights(weights.config, folder)
    for name, arr in weights.tensors.items():
        np.testing.assert_array_equal(loaded[name], arr, err_msg=name)


@pytest.mark.parametrize(("dtype", "limit"), [("bfloat16", 5e-2), ("float16", 1e-2)])
def test_half_precision_models_store_weights_and_activations_in_their_dtype(
    dtype, limit, tmp_path, build_config
) -> None:
    cfg = replace(tiny("qwen2"), dtype=dtype)
    compile_model(CompileOptions(cfg, detect_cpu(), str(tmp_path), build_config,
                                 buckets=BUCKETS))  # fmt: skip
    weights = random_weights(cfg, seed=4)
    model = load_model(tmp_path, weights, threads=1)
    assert model.layers[0].qkv[0].dtype == (np.uint16 if dtype == "bfloat16" else np.float16)
    assert generate_and_compare(model, weights, batch=2, prompt_len=4, steps=4) <= limit


def test_compiling_again_into_a_loaded_models_folder_keeps_it_running(
    tmp_path, build_config, family_weights
) -> None:
    """The new kernels replace the files; the process that loaded the old ones keeps them
    (rewriting a loaded shared library in place crashes the process that uses it)."""
    weights = family_weights["llama"]
    options = CompileOptions(tiny("llama"), detect_cpu(), str(tmp_path), build_config,
                             buckets=BUCKETS)  # fmt: skip
    compile_model(options)
    session = load_model(tmp_path, weights, threads=1).session(1, 8, 4)
    ids = np.array([[1, 2, 3, 4]])
    before = session.prefill(ids).copy()
    compile_model(options)
    assert not list((tmp_path / "kernels").glob("*.part"))
    np.testing.assert_array_equal(session.prefill(ids), before)


def test_decode_graph_spans_follow_the_kv_buckets(compiled, family_weights) -> None:
    """The graph key of a decode step and the kv length its graph is sized for: the high
    end of the bucket holding the length (the session's max_len for the last bucket), a new
    key per bucket although one default kernel serves both, and no graph at the one length
    an exact attention kernel is specialised at."""
    model = load_model(compiled["llama"], family_weights["llama"], threads=1)
    manifest = model.manifest
    att = manifest.task_for("decode", "attn_scores+attn_softmax+attn_context")
    low = replace(att.fallback, bucket={"b": 1, "m": 16}, ranges={"b": (1, 0), "m": (1, 16)})
    high = replace(att.fallback, bucket={"b": 1, "m": 32}, ranges={"b": (1, 0), "m": (17, 0)},
                   exact=True, pad=("b",), entry="attention_exact")  # fmt: skip
    tasks = tuple(replace(t, kernels=(low, high)) if t is att else t for t in manifest.tasks)
    model.manifest = replace(manifest, tasks=tasks)
    session = model.session(batch=1, max_len=40, max_prompt=8)

    def span(m: int):
        session.length = m - 1
        return session._graph_span()

    first = span(5)
    assert first is not None and first[1] == 16 and span(16) == first  # cached in the bucket
    second = span(17)
    assert second is not None and second[1] == 40 and second[0] != first[0]
    assert span(32) is None  # the exact kernel's own length
    assert span(33) == second and span(12) == first
