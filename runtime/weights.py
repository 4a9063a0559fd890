"""Weights: Hugging Face safetensors checkpoints (one file or sharded with the index) read
through the `safetensors` package, or random initialisation, as canonical fp32 arrays.

Canonical names are per layer `layers.N.{q,k,v,o,gate,up,down,input_norm,post_norm}` (and
`q_bias`, `k_bias`, `v_bias`, `o_bias`, `gate_bias`, `up_bias`, `down_bias` where the model has
them) and `embed`, `final_norm`, `lm_head`. Phi-3's fused `qkv_proj` and `gate_up_proj` are
split into them; a tied LM head is the embedding table. Norm weights are kept as the
checkpoint stores them (Gemma's `1 + weight` is applied by the consumer).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from tunefleet.coordinator.models import ModelConfig
from tunefleet.ir.dtypes import bf16_to_f32
from tunefleet.runtime.errors import RuntimeModelError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FLOAT_DTYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class Weights:
    """A model's weights by canonical name, float32 (the dtype conversion happens when the
    runtime packs them)."""

    config: ModelConfig
    tensors: Mapping[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.tensors[name]

    def get(self, name: str) -> np.ndarray | None:
        return self.tensors.get(name)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical tensor of `cfg` and its shape."""
    hid, inter = cfg.hidden_size, cfg.intermediate_size
    out: dict[str, tuple[int, ...]] = {
        "embed": (cfg.vocab_size, hid),
        "final_norm": (hid,),
        "lm_head": (cfg.vocab_size, hid),
    }
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        layer = {
            "q": (cfg.q_size, hid), "k": (cfg.kv_size, hid), "v": (cfg.kv_size, hid),
            "o": (hid, cfg.q_size), "gate": (inter, hid), "up": (inter, hid),
            "down": (hid, inter), "input_norm": (hid,), "post_norm": (hid,),
        }  # fmt: skip
        if cfg.qkv_bias:
            layer |= {"q_bias": (cfg.q_size,), "k_bias": (cfg.kv_size,), "v_bias": (cfg.kv_size,)}
        if cfg.o_bias:
            layer["o_bias"] = (hid,)
        if cfg.mlp_bias:
            layer |= {"gate_bias": (inter,), "up_bias": (inter,), "down_bias": (hid,)}
        out |= {p + k: v for k, v in layer.items()}
    return out


def random_weights(cfg: ModelConfig, seed: int = 0) -> Weights:
    """Random weights with activations of unit scale (projections ~ N(0, 1/fan_in), norms
    near 1), for benchmarks and tests."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(cfg).items():
        if name.endswith("norm"):
            base = 0.0 if cfg.family == "gemma" else 1.0  # Gemma stores weight - 1
            arr = base + 0.1 * rng.standard_normal(shape)
        elif name.endswith("bias"):
            arr = 0.1 * rng.standard_normal(shape)
        elif name == "embed":
            arr = rng.standard_normal(shape)
        else:
            arr = rng.standard_normal(shape) / math.sqrt(shape[-1])
        tensors[name] = arr.astype(np.float32)
    if cfg.tie_embeddings:
        tensors["lm_head"] = tensors["embed"]
    return Weights(cfg, tensors)


def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """Canonical name -> Hugging Face tensor name (split tensors map to their fused one)."""
    out = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
           "lm_head": "lm_head.weight"}  # fmt: skip
    fused = cfg.family == "phi3"
    for i in range(cfg.num_layers):
        hf, p = f"model.layers.{i}.", f"layers.{i}."
        for kind in ("q", "k", "v", "o"):
            proj = "qkv_proj" if fused and kind != "o" else f"{kind}_proj"
            out[p + kind] = f"{hf}self_attn.{proj}.weight"
            out[p + kind + "_bias"] = f"{hf}self_attn.{proj}.bias"
        for kind in ("gate", "up", "down"):
            proj = "gate_up_proj" if fused and kind != "down" else f"{kind}_proj"
            out[p + kind] = f"{hf}mlp.{proj}.weight"
            out[p + kind + "_bias"] = f"{hf}mlp.{proj}.bias"
        out[p + "input_norm"] = f"{hf}input_layernorm.weight"
        out[p + "post_norm"] = f"{hf}post_attention_layernorm.weight"
    return out


def load_weights(cfg: ModelConfig, path: str | Path) -> Weights:
    """Read a checkpoint: a `.safetensors` file, or a folder with `model.safetensors` or
    the shards named by `model.safetensors.index.json`. Missing tensors, wrong shapes and
    non-float dtypes are RuntimeModelError lines naming the tensor."""
    files = _tensor_files(Path(path))
    names = hf_names(cfg)
    expected = expected_shapes(cfg)
    tensors: dict[str, np.ndarray] = {}
    fused_cache: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        hf = names[name]
        if name == "lm_head" and cfg.tie_embeddings and hf not in files:
            continue
        if hf not in files:
            raise RuntimeModelError(
                f"weights {path}: missing tensor {hf!r} (needed for {cfg.family} {name})"
            )
        if hf not in fused_cache:
            fused_cache[hf] = _read(files[hf], hf)
        arr = fused_cache[hf]
        if hf.endswith(("qkv_proj.weight", "qkv_proj.bias", "gate_up_proj.weight",
                        "gate_up_proj.bias")):  # fmt: skip
            arr = _split_part(cfg, name, arr, hf)
        if arr.shape != shape:
            raise RuntimeModelError(
                f"weights {path}: tensor {hf!r} has shape {list(arr.shape)}, "
                f"the {cfg.family} config needs {list(shape)}"
            )
        tensors[name] = arr
    if cfg.tie_embeddings and "lm_head" not in tensors:
        tensors["lm_head"] = tensors["embed"]
    return Weights(cfg, tensors)


def _split_part(cfg: ModelConfig, name: str, arr: np.ndarray, hf: str) -> np.ndarray:
    """The q, k or v rows of a fused qkv tensor, or the gate or up rows of gate_up."""
    kind = name.split(".")[-1].removesuffix("_bias")
    if "qkv" in hf:
        sizes = {"q": cfg.q_size, "k": cfg.kv_size, "v": cfg.kv_size}
    else:
        sizes = {"gate": cfg.intermediate_size, "up": cfg.intermediate_size}
    total = sum(sizes.values())
    if arr.shape[0] != total:
        want = [total, *arr.shape[1:]]
        raise RuntimeModelError(
            f"tensor {hf!r} has shape {list(arr.shape)}, the {cfg.family} config needs {want}"
        )
    start = 0
    for k, size in sizes.items():
        if k == kind:
            return arr[start : start + size]
        start += size
    raise AssertionError(kind)


def _tensor_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> the file holding it."""
    if path.is_file():
        return {k: path for k in _keys(path)}
    if not path.is_dir():
        raise RuntimeModelError(f"weights {path}: no such file or folder")
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise RuntimeModelError(f"{index}: not a safetensors index ({err})") from None
        out = {}
        for name, file in weight_map.items():
            shard = path / file
            if not shard.is_file():
                raise RuntimeModelError(f"{index}: shard {file} of {name!r} is missing")
            out[name] = shard
        return out
    single = path / SINGLE_NAME
    if single.is_file():
        return {k: single for k in _keys(single)}
    raise RuntimeModelError(f"weights {path}: no {SINGLE_NAME} or {INDEX_NAME} in the folder")


def _keys(file: Path) -> list[str]:
    try:
        with safe_open(str(file), framework="np") as f:
            return list(f.keys())
    except (SafetensorError, OSError) as err:
        raise RuntimeModelError(f"weights {file}: not a safetensors file ({err})") from None


def _read(file: Path, name: str) -> np.ndarray:
    """One tensor as float32; bf16 (which numpy lacks) is read from the file's own offsets."""
    with safe_open(str(file), framework="np") as f:
        if name not in f.keys():
            raise RuntimeModelError(f"weights {file}: missing tensor {name!r}")
        dtype = f.get_slice(name).get_dtype()
        if dtype not in FLOAT_DTYPES:
            raise RuntimeModelError(
                f"weights {file}: tensor {name!r} has dtype {dtype}; a model weight must be "
                f"one of {', '.join(FLOAT_DTYPES)}"
            )
        if dtype != "BF16":
            return np.asarray(f.get_tensor(name), dtype=np.float32)
        shape = tuple(f.get_slice(name).get_shape())
    return _read_bf16(file, name, shape)


def _read_bf16(file: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    with open(file, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
        begin, end = header[name]["data_offsets"]
        handle.seek(8 + size + begin)
        raw = np.frombuffer(handle.read(end - begin), dtype="<u2")
    return bf16_to_f32(raw).reshape(shape).astype(np.float32)


def save_checkpoint(w: Weights, folder: str | Path) -> Path:
    """Write `w` as a one-file Hugging Face checkpoint (`model.safetensors`, HF names; Phi-3's
    projections fused, a tied LM head left out), e.g. for loading the same random weights
    into another implementation."""
    from safetensors.numpy import save_file

    cfg = w.config
    names = hf_names(cfg)
    out: dict[str, np.ndarray] = {}
    for name, arr in w.tensors.items():
        hf = names[name]
        if name == "lm_head" and cfg.tie_embeddings:
            continue
        if cfg.family == "phi3" and ("qkv_proj" in hf or "gate_up_proj" in hf):
            parts = ("q", "k", "v") if "qkv_proj" in hf else ("gate", "up")
            prefix, kind = name.rsplit(".", 1)
            suffix = "_bias" if kind.endswith("_bias") else ""
            if kind.removesuffix("_bias") == parts[0]:
                out[hf] = np.concatenate([w[f"{prefix}.{p}{suffix}"] for p in parts])
            continue
        out[hf] = np.ascontiguousarray(arr, dtype=np.float32)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path / SINGLE_NAME))
    return path
