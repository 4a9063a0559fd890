"""The lowered kernels: library keys, counts against the graph, and numerics against numpy.

Fused kernels are compiled with gcc through the ir C code generator and run on random inputs,
so a fusion that changes what the layer computes fails here.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from tunefleet.coordinator.buckets import eval_dims
from tunefleet.coordinator.fusion import FusedCall, fuse
from tunefleet.coordinator.graph import Phase, Quant, build_graph
from tunefleet.coordinator.kernels import build_func
from tunefleet.coordinator.lowering import graph_kernel
from tunefleet.coordinator.models import ModelConfig
from tunefleet.coordinator.presets import PRESETS
from tunefleet.coordinator.tasks import model_tasks
from tunefleet.ir import Var, bytes_moved, flops, simplify, structural_hash
from tunefleet.ir import ops as irops
from tunefleet.ir.codegen import KernelSource, build_source
from tunefleet.ir.default_key_tiles import key_tiled
from tunefleet.ir.dtypes import numpy_dtype
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import Const
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.visit import free_vars, substitute

TINY = PRESETS["tiny"]
# Gemma-like: multi-query, head_dim != hidden/heads, GeGLU, scaled embeddings; Qwen2-like bias
TINY_GEMMA = dataclasses.replace(TINY, name="tiny-gemma", family="gemma", num_heads=4,
                                 num_kv_heads=1, head_dim=32, activation="gelu_tanh",
                                 scale_embedding=True, tie_embeddings=True)  # fmt: skip
TINY_QWEN = dataclasses.replace(TINY, name="tiny-qwen", family="qwen2", qkv_bias=True)


def test_single_calls_match_library_keys() -> None:
    cfg = PRESETS["llama-3-8b"]
    tasks = {t.name: t for t in model_tasks(cfg, Phase.DECODE)}
    dense = irops.get_op("dense").build({"m": Var("b"), "n": cfg.vocab_size,
                                          "k": cfg.hidden_size}, "bfloat16")  # fmt: skip
    assert tasks["lm_head"].workload_key == structural_hash(dense)
    norm = irops.get_op("rmsnorm").build({"m": Var("tokens"), "n": 4096}, "bfloat16")
    assert tasks["input_norm"].workload_key == structural_hash(norm)  # names do not matter


@pytest.mark.parametrize("name", ["llama-3-8b", "qwen2-7b", "gemma-2b", "phi-3-mini"])
@pytest.mark.parametrize("quant", list(Quant))
def test_ir_counts_agree_with_graph_counts(name: str, quant: Quant) -> None:
    """The PrimFuncs read and write what the graph says, and do the matmuls it says."""
    for phase, dims in ((Phase.DECODE, {"b": 4, "m": 1024}), (Phase.PREFILL, {"n": 256})):
        g = build_graph(PRESETS[name], phase, quant)
        d = eval_dims(phase, dims)
        for group in fuse(g):
            func = build_func(group, phase)
            graph_k = graph_kernel(group, g)
            # elementwise op counts are conventions; q4 FLOPs are counted at the graph level
            if group.kind in ("dense", "attention") and group.anchor.op != "q4_dense":
                f_ir, f_graph = flops(func, d), graph_k.flops(d)
                if key_tiled(func):  # a prompt's attention scores every key twice
                    f_graph = f_graph * 3 // 2
                assert abs(f_ir - f_graph) <= 0.02 * f_graph, (group.name, f_ir, f_graph)
            if group.op != "embedding":  # a gather reads rows, not the table
                b_ir, b_graph = bytes_moved(func, d), graph_k.nbytes(d)
                assert abs(b_ir - b_graph) <= 0.02 * b_graph, (group.name, b_ir, b_graph)


# ----------------------------------------------------------------- running kernels with gcc

_BUILD_DIR = Path(tempfile.gettempdir()) / "tunefleet-coordinator-tests"


def _run(func: object, inputs: Sequence[np.ndarray], dims: Mapping[str, int]) -> list[np.ndarray]:
    """Compile the PrimFunc to C, call it on `inputs` and return its outputs."""
    ks: KernelSource = build_source(func)
    digest = hashlib.sha256(ks.source.encode()).hexdigest()[:20]
    lib = _BUILD_DIR / f"{digest}.so"
    if not lib.exists():
        _BUILD_DIR.mkdir(exist_ok=True)
        src = lib.with_suffix(".c")
        src.write_text(ks.source)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp.so")  # concurrent runs never share one
        subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(tmp), str(src), "-lm"],
                       check=True, capture_output=True)  # fmt: skip
        tmp.replace(lib)
    fn = getattr(ctypes.CDLL(str(lib)), ks.entry)
    # fused kernels view weights in the layout their epilogue pairs (e.g. [heads, 2, d/2, k]);
    # the numpy arrays are reshaped to it, which keeps their memory as it is
    arrays = [np.ascontiguousarray(a).reshape(_shape(arg.shape, dims))
              for a, arg in zip(inputs, ks.buffer_args, strict=False)]  # fmt: skip
    for arg in ks.buffer_args[len(inputs) :]:
        arrays.append(np.full(_shape(arg.shape, dims), np.nan, dtype=numpy_dtype(arg.dtype)))
    for arg, arr in zip(ks.buffer_args, arrays, strict=True):
        assert arr.dtype == numpy_dtype(arg.dtype), arg.name
        assert arr.shape == _shape(arg.shape, dims), arg.name
    ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
    scalars = [ctypes.c_int64(dims[a.name]) for a in ks.scalar_args]
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * len(ptrs) + [ctypes.c_int64] * len(scalars)
    fn(*ptrs, *scalars)
    return arrays[len(inputs) :]


def _shape(shape: Sequence[object], dims: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(s if isinstance(s, int) else _eval(s, dims) for s in shape)


def _eval(expr: object, dims: Mapping[str, int]) -> int:
    env = {v: Const(dims[v.name], "int64") for v in free_vars(expr)}
    out = simplify(substitute(expr, env))
    assert isinstance(out, Const)
    return int(out.value)


def _groups(cfg: ModelConfig, phase: Phase, quant: Quant = Quant.NONE) -> dict[str, FusedCall]:
    return {g.name: g for g in fuse(build_graph(cfg, phase, quant))}


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    c = np.concatenate([cos, cos], -1)[:, None, :]
    s = np.concatenate([sin, sin], -1)[:, None, :]
    return x * c + np.concatenate([-x[..., half:], x[..., :half]], -1) * s


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


pytestmark_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
rng = np.random.default_rng(7)


def _randn(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


@pytestmark_gcc
@pytest.mark.parametrize("cfg", [TINY, TINY_QWEN, TINY_GEMMA], ids=lambda c: c.name)
def test_fused_qkv_rope_runs_like_numpy(cfg: ModelConfig) -> None:
    t, h, kv, d = 5, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    group = _groups(cfg, Phase.PREFILL)["qkv_proj+rope"]
    x, w = _randn(t, cfg.hidden_size), _randn((h + 2 * kv) * d, cfg.hidden_size) * 0.1
    ang = rng.uniform(-3, 3, (t, d // 2)).astype(np.float32)
    ins = [x, w] + ([_randn((h + 2 * kv) * d)] if cfg.qkv_bias else [])
    (out,) = _run(build_func(group, Phase.PREFILL), [*ins, np.cos(ang), np.sin(ang)], {"n": t})
    out = out.reshape(t, h + 2 * kv, d)  # [tokens, q|k|v heads, 2, d/2] is [tokens, heads, d]
    qk, v = out[:, : h + kv], out[:, h + kv :]
    qkv = x.astype(np.float64) @ w.T + (ins[2] if cfg.qkv_bias else 0)
    qkv = qkv.reshape(t, h + 2 * kv, d)
    np.testing.assert_allclose(qk, _rope(qkv[:, : h + kv], np.cos(ang), np.sin(ang)),
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    np.testing.assert_allclose(v, qkv[:, h + kv :], rtol=1e-4, atol=1e-4)


@pytestmark_gcc
@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("cfg", [TINY, TINY_GEMMA], ids=lambda c: c.name)
def test_fused_attention_runs_like_numpy(cfg: ModelConfig, phase: Phase) -> None:
    h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    dims = {"b": 3, "m": 9} if phase is Phase.DECODE else {"n": 4, "m": 7}
    b, n, m = dims.get("b", 1), dims.get("n", 1), dims["m"]
    group = _groups(cfg, phase)["attn_scores+attn_softmax+attn_context"]
    q, k, v = _randn(b, h, n, d), _randn(b, kv, m, d), _randn(b, kv, m, d)
    caches = [k, v]
    if phase is Phase.DECODE:  # a decode step reads the cache position-major, [m, b, kv, d]
        caches = [np.ascontiguousarray(a.transpose(2, 0, 1, 3)) for a in caches]
    (out,) = _run(build_func(group, phase), [q, *caches], dims)
    kk, vv = (np.repeat(a, h // kv, axis=1).astype(np.float64) for a in (k, v))
    s = q @ kk.swapaxes(-1, -2)
    if phase is Phase.PREFILL:  # token i of the prompt sits at position m - n + i
        allowed = np.arange(m)[None, :] <= np.arange(n)[:, None] + (m - n)
        s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, p @ vv, rtol=1e-4, atol=1e-5)


@pytestmark_gcc
@pytest.mark.parametrize("cfg", [TINY, TINY_GEMMA], ids=lambda c: c.name)
def test_fused_mlp_and_residuals_run_like_numpy(cfg: ModelConfig) -> None:
    t, hid, inter = 3, cfg.hidden_size, cfg.intermediate_size
    groups = _groups(cfg, Phase.DECODE)
    x, w = _randn(t, hid), _randn(2 * inter, hid) * 0.1
    (act,) = _run(build_func(groups["gate_up_proj+act"], Phase.DECODE), [x, w], {"b": t})
    gu = x.astype(np.float64) @ w.T
    gate, up = gu[:, :inter], gu[:, inter:]
    f = gate / (1 + np.exp(-gate)) if cfg.activation == "silu" else _gelu_tanh(gate)
    np.testing.assert_allclose(act, f * up, rtol=1e-4, atol=1e-4)

    wd, res = _randn(hid, inter) * 0.1, _randn(t, hid)
    (y,) = _run(build_func(groups["down_proj+mlp_residual"], Phase.DECODE), [act, wd, res],
                {"b": t})  # fmt: skip
    np.testing.assert_allclose(y, act.astype(np.float64) @ wd.T + res, rtol=1e-4, atol=1e-4)


@pytestmark_gcc
@pytest.mark.parametrize("name", ["gate_up_proj+act", "qkv_proj+rope"])
def test_paired_epilogue_moves_under_the_dense_where_its_pairs_are_whole(name: str) -> None:
    """An epilogue reading two columns of the accumulator (gate|up, rope's halves) moves under
    a dense loop only where both are produced; there it computes what the plain kernel does."""
    group, dims = _groups(TINY, Phase.DECODE)[name], {"b": 3}
    func = build_func(group, Phase.DECODE)
    sch = Schedule(func)
    for blk in [b for b in ("dense", "gate", "up") if _has_block(sch, b)]:
        sch.compute_inline(sch.get_block(blk))
    acc = sch.get_block("dense_acc")
    (out,) = sch.get_consumers(acc)
    loops = sch.get_loops(acc)
    pair = 1 if name == "gate_up_proj+act" else 2  # the [.., 2, ..] axis of the accumulator
    with pytest.raises(ScheduleError, match="several points"):
        sch.copy().reverse_compute_at(out, loops[pair])
    sch.reorder(*loops[:pair], *loops[pair + 1 : -1], loops[pair])  # pair loop innermost
    sch.reverse_compute_at(out, loops[-2])
    src = build_source(sch).source
    assert src != build_source(func).source
    ins = [_randn(*_shape(a.shape, dims)) for a in build_source(func).buffer_args[:-1]]
    np.testing.assert_allclose(_run(sch, ins, dims)[0], _run(func, ins, dims)[0], rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def _has_block(sch: Schedule, name: str) -> bool:
    try:
        sch.get_block(name)
    except ScheduleError:
        return False
    return True


@pytestmark_gcc
@pytest.mark.parametrize("cfg", [TINY, TINY_GEMMA], ids=lambda c: c.name)
def test_embedding_gathers_rows(cfg: ModelConfig) -> None:
    group = _groups(cfg, Phase.PREFILL)["embed"]
    ids = np.array([3, 0, 1023, 3, 17], dtype=np.int32)
    table = _randn(cfg.vocab_size, cfg.hidden_size)
    (out,) = _run(build_func(group, Phase.PREFILL), [ids, table], {"n": len(ids)})
    scale = math.sqrt(cfg.hidden_size) if cfg.scale_embedding else 1.0
    np.testing.assert_allclose(out, table[ids] * scale, rtol=1e-6)


def _q4_weights(n: int, k: int, gs: int = 32) -> tuple[np.ndarray, np.ndarray]:
    qw = rng.integers(0, 2**32, (n, k // 8), dtype=np.uint64).astype(np.uint32)
    return qw, rng.uniform(0.01, 0.05, (n, k // gs)).astype(np.float16)


@pytestmark_gcc
def test_q4_dense_add_runs_like_numpy() -> None:
    group = _groups(TINY, Phase.DECODE, Quant.Q4)["o_proj+attn_residual"]
    t, hid = 2, TINY.hidden_size
    x, res = _randn(t, hid), _randn(t, hid)
    qw, scales = _q4_weights(hid, hid)
    (y,) = _run(build_func(group, Phase.DECODE), [x, qw, scales, res], {"b": t})
    w = irops.dequantize_q4(qw, scales, 32)
    np.testing.assert_allclose(y, x.astype(np.float64) @ w.T + res, rtol=1e-4, atol=1e-4)


@pytestmark_gcc
@pytest.mark.parametrize("fusion", [True, False])
def test_biased_q4_dense_keeps_its_bias(fusion: bool) -> None:
    cfg = dataclasses.replace(TINY_QWEN, o_bias=True)
    group = next(g for g in fuse(build_graph(cfg, Phase.DECODE, Quant.Q4), fusion)
                 if g.anchor.name == "o_proj")  # fmt: skip
    t, hid = 3, cfg.hidden_size
    x, bias, res = _randn(t, hid), _randn(hid), _randn(t, hid)
    qw, scales = _q4_weights(hid, hid)
    ins = [x, qw, scales, bias] + ([res] if fusion else [])
    (y,) = _run(build_func(group, Phase.DECODE), ins, {"b": t})
    want = x.astype(np.float64) @ irops.dequantize_q4(qw, scales, 32).T + bias
    np.testing.assert_allclose(y, want + (res if fusion else 0), rtol=1e-4, atol=1e-4)
