"""Built-in model presets, so common models need no download, and the name-or-path resolver.

The numbers are those of the published Hugging Face `config.json` of each model.
"""

from __future__ import annotations

from pathlib import Path

from tunefleet.coordinator.models import ModelConfig, ModelConfigError, load_hf_config


def _llama(name: str, hidden: int, inter: int, layers: int, heads: int, kv: int, vocab: int,
           theta: float, dtype: str = "bfloat16") -> ModelConfig:  # fmt: skip
    return ModelConfig(
        name=name,
        family="llama",
        hidden_size=hidden,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hidden // heads,
        vocab_size=vocab,
        dtype=dtype,
        rope_theta=theta,
    )


PRESETS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        _llama("llama-2-7b", 4096, 11008, 32, 32, 32, 32000, 1e4, "float16"),
        _llama("llama-3-8b", 4096, 14336, 32, 32, 8, 128256, 5e5),
        _llama("llama-3-70b", 8192, 28672, 80, 64, 8, 128256, 5e5),
        ModelConfig(
            name="mistral-7b",
            family="mistral",
            hidden_size=4096,
            intermediate_size=14336,
            num_layers=32,
            num_heads=32,
            num_kv_heads=8,
            head_dim=128,
            vocab_size=32000,
            dtype="bfloat16",
            rope_theta=1e4,
        ),
        ModelConfig(
            name="qwen2-7b",
            family="qwen2",
            hidden_size=3584,
            intermediate_size=18944,
            num_layers=28,
            num_heads=28,
            num_kv_heads=4,
            head_dim=128,
            vocab_size=152064,
            dtype="bfloat16",
            qkv_bias=True,
            rope_theta=1e6,
            norm_eps=1e-6,
        ),
        ModelConfig(
            name="qwen2-0.5b",
            family="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_layers=24,
            num_heads=14,
            num_kv_heads=2,
            head_dim=64,
            vocab_size=151936,
            dtype="bfloat16",
            qkv_bias=True,
            tie_embeddings=True,
            rope_theta=1e6,
            norm_eps=1e-6,
        ),
        ModelConfig(
            name="gemma-2b",
            family="gemma",
            hidden_size=2048,
            intermediate_size=16384,
            num_layers=18,
            num_heads=8,
            num_kv_heads=1,
            head_dim=256,
            vocab_size=256000,
            dtype="bfloat16",
            activation="gelu_tanh",
            tie_embeddings=True,
            scale_embedding=True,
            norm_eps=1e-6,
        ),
        ModelConfig(
            name="gemma-7b",
            family="gemma",
            hidden_size=3072,
            intermediate_size=24576,
            num_layers=28,
            num_heads=16,
            num_kv_heads=16,
            head_dim=256,
            vocab_size=256000,
            dtype="bfloat16",
            activation="gelu_tanh",
            tie_embeddings=True,
            scale_embedding=True,
            norm_eps=1e-6,
        ),
        ModelConfig(
            name="phi-3-mini",
            family="phi3",
            hidden_size=3072,
            intermediate_size=8192,
            num_layers=32,
            num_heads=32,
            num_kv_heads=32,
            head_dim=96,
            vocab_size=32064,
            dtype="bfloat16",
        ),
        # A small grouped-query Llama for tests and demos: every op kind, tiny shapes.
        ModelConfig(
            name="tiny",
            family="llama",
            hidden_size=256,
            intermediate_size=704,
            num_layers=2,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            vocab_size=1024,
            dtype="float32",
        ),
    )
}


def resolve_model(spec: str) -> ModelConfig:
    """A preset by name, else a `config.json` path or a directory holding one."""
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if path.exists():
        return load_hf_config(path)
    raise ModelConfigError(
        f"unknown model {spec!r}: not a preset ({', '.join(PRESETS)}) "
        "and no such config.json or directory"
    )
