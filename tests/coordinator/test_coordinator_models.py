"""Reading Hugging Face configs of each supported family, and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunefleet.coordinator.models import (
    SUPPORTED_ARCHITECTURES,
    ModelConfigError,
    load_hf_config,
    parse_hf_config,
)
from tunefleet.coordinator.presets import PRESETS, resolve_model

# Trimmed copies of the published config.json files (keys that decide shapes, plus noise).
HF_CONFIGS = {
    "llama-3-8b": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "bos_token_id": 128000,
    },
    "llama-2-7b": {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "vocab_size": 32000,
        "torch_dtype": "float16",
        "hidden_act": "silu",
    },
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"],
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    },
    "qwen2-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "gemma-2b": {
        "architectures": ["GemmaForCausalLM"],
        "hidden_size": 2048,
        "intermediate_size": 16384,
        "num_hidden_layers": 18,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "vocab_size": 256000,
        "hidden_act": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-06,
        "torch_dtype": "bfloat16",
    },
    "gemma-7b": {
        "architectures": ["GemmaForCausalLM"],
        "hidden_size": 3072,
        "intermediate_size": 24576,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "vocab_size": 256000,
        "hidden_activation": "gelu_pytorch_tanh",
        "torch_dtype": "bfloat16",
    },
    "phi-3-mini": {
        "architectures": ["Phi3ForCausalLM"],
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32064,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
}


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_config_matches_preset(tmp_path: Path, name: str) -> None:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(HF_CONFIGS[name]))
    cfg = load_hf_config(tmp_path / name)  # a directory holding config.json
    preset = PRESETS[name]
    for field in ("family", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                  "num_kv_heads", "head_dim", "vocab_size", "dtype", "qkv_bias", "activation",
                  "tie_embeddings", "scale_embedding"):  # fmt: skip
        assert getattr(cfg, field) == getattr(preset, field), field
    assert cfg.name == name


def test_family_specifics() -> None:
    gemma7 = parse_hf_config(HF_CONFIGS["gemma-7b"], "gemma.json")
    assert gemma7.head_dim * gemma7.num_heads == 4096 != gemma7.hidden_size
    gemma = parse_hf_config(HF_CONFIGS["gemma-2b"], "gemma.json")
    assert gemma.num_kv_heads == 1 and gemma.group_size == 8  # multi-query
    assert gemma.activation == "gelu_tanh" and gemma.tie_embeddings  # Gemma ties by default
    assert parse_hf_config(HF_CONFIGS["qwen2-7b"], "q.json").qkv_bias
    llama2 = parse_hf_config(HF_CONFIGS["llama-2-7b"], "l.json")
    assert llama2.num_kv_heads == llama2.num_heads  # no num_key_value_heads: plain MHA
    assert parse_hf_config(HF_CONFIGS["llama-3-8b"], "l.json").rope_theta == 500000.0
    biased = parse_hf_config(dict(HF_CONFIGS["llama-3-8b"], attention_bias=True,
                                  mlp_bias=True), "l.json")  # fmt: skip
    assert biased.qkv_bias and biased.o_bias and biased.mlp_bias
    qwen = parse_hf_config(HF_CONFIGS["qwen2-7b"], "q.json")
    assert qwen.qkv_bias and not qwen.o_bias and not qwen.mlp_bias


def test_missing_key_names_key_and_file(tmp_path: Path) -> None:
    data = dict(HF_CONFIGS["mistral-7b"])
    del data["intermediate_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ModelConfigError, match="intermediate_size") as info:
        load_hf_config(path)
    assert str(path) in str(info.value)


def test_unsupported_architecture_names_supported(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_embd": 768}))
    with pytest.raises(ModelConfigError, match="GPT2LMHeadModel") as info:
        load_hf_config(path)
    for arch in SUPPORTED_ARCHITECTURES:
        assert arch in str(info.value)


def test_bad_values_and_files(tmp_path: Path) -> None:
    bad = dict(HF_CONFIGS["llama-3-8b"], num_key_value_heads=5)
    with pytest.raises(ModelConfigError, match="multiple"):
        parse_hf_config(bad, "x.json")
    with pytest.raises(ModelConfigError, match="hidden_size"):
        parse_hf_config(dict(HF_CONFIGS["llama-3-8b"], hidden_size="4096"), "x.json")
    with pytest.raises(ModelConfigError, match="torch_dtype"):
        parse_hf_config(dict(HF_CONFIGS["llama-3-8b"], torch_dtype="float8"), "x.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_hf_config(tmp_path)
    with pytest.raises(ModelConfigError, match="no such config"):
        load_hf_config(tmp_path / "missing")


def test_resolve_model() -> None:
    assert resolve_model("tiny") is PRESETS["tiny"]
    with pytest.raises(ModelConfigError, match="llama-3-8b"):  # lists presets
        resolve_model("llama-9")
