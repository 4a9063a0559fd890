"""Tiny configs of every supported family and Hugging Face checkpoints written with safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from tunefleet.coordinator.models import ModelConfig, parse_hf_config
from tunefleet.ir.dtypes import to_float32
from tunefleet.runtime.reference import ReferenceModel
from tunefleet.runtime.weights import Weights, hf_names

BUCKETS = {"b": (1, 4), "n": (8, 32), "m": (64,)}

_BASE = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "vocab_size": 100, "torch_dtype": "float32"}  # fmt: skip
HF_CONFIGS = {
    "llama": {**_BASE, "architectures": ["LlamaForCausalLM"], "num_key_value_heads": 2},
    "mistral": {**_BASE, "architectures": ["MistralForCausalLM"], "num_key_value_heads": 2,
                "rope_theta": 1e6},
    "qwen2": {**_BASE, "architectures": ["Qwen2ForCausalLM"], "num_key_value_heads": 2,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "gemma": {**_BASE, "architectures": ["GemmaForCausalLM"], "num_key_value_heads": 1,
              "head_dim": 16, "hidden_act": "gelu_pytorch_tanh"},
    "phi3": {**_BASE, "architectures": ["Phi3ForCausalLM"], "num_key_value_heads": 4},
}  # fmt: skip


def tiny(family: str) -> ModelConfig:
    return parse_hf_config(HF_CONFIGS[family], f"{family}.json", name=f"tiny-{family}")


def write_checkpoint(w: Weights, folder: Path, shards: int = 1) -> Path:
    """Write `w` under Hugging Face names (Phi-3 fused, tied heads left out), `shards` files
    with an index when more than one."""
    cfg = w.config
    names = hf_names(cfg)
    out: dict[str, np.ndarray] = {}
    for name, arr in w.tensors.items():
        if name == "lm_head" and cfg.tie_embeddings:
            continue
        hf = names[name]
        if cfg.family == "phi3" and ("qkv_proj" in hf or "gate_up_proj" in hf):
            continue
        out[hf] = np.ascontiguousarray(arr)
    if cfg.family == "phi3":
        for i in range(cfg.num_layers):
            p, hf = f"layers.{i}.", f"model.layers.{i}."
            out[hf + "self_attn.qkv_proj.weight"] = np.concatenate(
                [w[p + "q"], w[p + "k"], w[p + "v"]]
            )
            out[hf + "mlp.gate_up_proj.weight"] = np.concatenate([w[p + "gate"], w[p + "up"]])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(HF_CONFIGS.get(cfg.family, {})))
    if shards == 1:
        save_file(out, str(folder / "model.safetensors"))
        return folder
    keys = sorted(out)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: out[k] for k in keys[s::shards]}
        save_file(part, str(folder / file))
        weight_map |= {k: file for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


def rel_err(a: np.ndarray, r: np.ndarray, dtype: str = "float32") -> float:
    """Largest |a - r| over the largest |r|; `a` stored in `dtype` (bf16 as bit patterns)."""
    values = to_float32(a, dtype).astype(np.float64)
    return float(np.abs(values - r).max() / np.abs(r).max())


def generate_and_compare(model, weights: Weights, batch: int, prompt_len: int, steps: int) -> float:
    """Prefill and greedy decode on the runtime (any backend) and the reference fed the same
    tokens; the largest relative logit error; asserts the greedy tokens agree at every step."""
    session = model.session(batch, prompt_len + steps, prompt_len)
    ref = ReferenceModel(weights)
    ids = np.random.default_rng(batch * 100 + prompt_len).integers(
        0, weights.config.vocab_size, (batch, prompt_len)
    )
    dtype = weights.config.dtype
    logits, want = session.prefill(ids), ref.prefill(ids)
    worst = rel_err(session.host(logits), want, dtype)
    tok = session.greedy(logits[:, -1]).copy()
    assert np.array_equal(tok, want[:, -1].argmax(-1))
    for step in range(steps):
        logits, want = session.decode(tok), ref.decode(tok)
        worst = max(worst, rel_err(session.host(logits), want, dtype))
        tok = session.greedy(logits).copy()
        assert np.array_equal(tok, want.argmax(-1)), f"greedy tokens differ at step {step}"
    return worst
