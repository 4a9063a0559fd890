"""Decoder-only model configurations and the Hugging Face `config.json` reader.

A `ModelConfig` holds only what decides the shapes and the op mix of a forward pass; the
reader maps each supported architecture's keys onto it and names the file and the key when
one is missing, so a user knows what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelConfigError(ValueError):
    """A model config cannot be read or describes a model the frontend cannot build."""


@dataclass(frozen=True)
class Family:
    """What differs between supported architectures beyond the numbers in the config."""

    name: str
    architecture: str  # the Hugging Face `architectures[0]` class name
    qkv_bias: bool  # q/k/v projections carry a bias (Qwen2)
    activation: str  # gated MLP activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    tie_default: bool  # tie_word_embeddings when the config omits it
    scale_embedding: bool  # embeddings are multiplied by sqrt(hidden) (Gemma)


FAMILIES: dict[str, Family] = {
    f.architecture: f
    for f in (
        Family("llama", "LlamaForCausalLM", False, "silu", False, False),
        Family("mistral", "MistralForCausalLM", False, "silu", False, False),
        Family("qwen2", "Qwen2ForCausalLM", True, "silu", False, False),
        Family("gemma", "GemmaForCausalLM", False, "gelu_tanh", True, True),
        Family("phi3", "Phi3ForCausalLM", False, "silu", False, False),
    )
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(FAMILIES)

_REQUIRED = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)

_MODEL_TYPES = {f.name: f for f in FAMILIES.values()}

_DTYPES = {
    "float32": "float32",
    "float": "float32",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
}


@dataclass(frozen=True)
class ModelConfig:
    """The shape-deciding facts of a decoder-only transformer."""

    name: str
    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str = "float16"
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False  # gate/up and down projections carry biases
    activation: str = "silu"
    tie_embeddings: bool = False
    scale_embedding: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for key in (
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "vocab_size",
        ):
            if getattr(self, key) <= 0:
                raise ModelConfigError(f"{self.name}: {key} must be positive")
        if self.head_dim % 2:
            raise ModelConfigError(f"{self.name}: rope needs an even head_dim, got {self.head_dim}")
        if self.num_heads % self.num_kv_heads:
            raise ModelConfigError(
                f"{self.name}: num_attention_heads ({self.num_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )

    @property
    def q_size(self) -> int:
        """Width of the query projection output."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection output."""
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 = MHA, num_heads = MQA)."""
        return self.num_heads // self.num_kv_heads


def parse_hf_config(data: Mapping[str, Any], source: str, name: str | None = None) -> ModelConfig:
    """A `ModelConfig` from a parsed Hugging Face config; `source` names the file in errors."""
    family = _family_of(data, source)
    missing = [k for k in _REQUIRED if data.get(k) is None]
    if missing:
        keys = ", ".join(repr(k) for k in missing)
        raise ModelConfigError(
            f"{source}: missing key{'s' * (len(missing) > 1)} {keys} (needed for {family.name})"
        )

    def need(key: str) -> Any:
        if key not in data or data[key] is None:
            raise ModelConfigError(f"{source}: missing key '{key}' (needed for {family.name})")
        return data[key]

    def positive_int(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ModelConfigError(f"{source}: '{key}' must be a positive integer, got {value!r}")
        return value

    hidden = positive_int("hidden_size", need("hidden_size"))
    heads = positive_int("num_attention_heads", need("num_attention_heads"))
    kv_heads = data.get("num_key_value_heads")
    kv_heads = heads if kv_heads is None else positive_int("num_key_value_heads", kv_heads)
    head_dim = data.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise ModelConfigError(
                f"{source}: hidden_size {hidden} is not a multiple of num_attention_heads "
                f"{heads}; add 'head_dim'"
            )
        head_dim = hidden // heads
    head_dim = positive_int("head_dim", head_dim)
    # Llama-style attention_bias puts a bias on q, k, v and o; Qwen2's q/k/v bias is implied
    attention_bias = bool(data.get("attention_bias", False))
    dtype_name = data.get("torch_dtype", data.get("dtype", "float32"))
    if dtype_name not in _DTYPES:
        raise ModelConfigError(
            f"{source}: unsupported torch_dtype {dtype_name!r}; use one of {sorted(_DTYPES)}"
        )
    act = data.get("hidden_activation") or data.get("hidden_act") or family.activation
    activation = "gelu_tanh" if str(act).startswith("gelu") else "silu"
    if act not in ("silu", "swish") and activation == "silu":
        raise ModelConfigError(f"{source}: unsupported hidden_act {act!r}; use silu or gelu")
    tie = data.get("tie_word_embeddings")
    return ModelConfig(
        name=name or str(data.get("_name_or_path") or Path(source).parent.name or family.name),
        family=family.name,
        hidden_size=hidden,
        intermediate_size=positive_int("intermediate_size", need("intermediate_size")),
        num_layers=positive_int("num_hidden_layers", need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=positive_int("vocab_size", need("vocab_size")),
        dtype=_DTYPES[dtype_name],
        qkv_bias=family.qkv_bias or attention_bias,
        o_bias=attention_bias,
        mlp_bias=bool(data.get("mlp_bias", False)),
        activation=activation,
        tie_embeddings=family.tie_default if tie is None else bool(tie),
        scale_embedding=family.scale_embedding,
        rope_theta=float(data.get("rope_theta", 10000.0)),
        norm_eps=float(data.get("rms_norm_eps", 1e-5)),
    )


def load_hf_config(path: str | Path) -> ModelConfig:
    """Read a `config.json`, or the one inside a model directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.is_file():
        raise ModelConfigError(f"{p}: no such config file")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise ModelConfigError(f"{p}: cannot read: {err}") from err
    except json.JSONDecodeError as err:
        raise ModelConfigError(f"{p}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise ModelConfigError(f"{p}: expected a JSON object")
    name = p.parent.name if p.name == "config.json" and p.parent.name else p.stem
    return parse_hf_config(data, str(p), name=name)


def _family_of(data: Mapping[str, Any], source: str) -> Family:
    supported = ", ".join(SUPPORTED_ARCHITECTURES)
    archs = data.get("architectures")
    if isinstance(archs, list) and archs:
        for arch in archs:
            if arch in FAMILIES:
                return FAMILIES[arch]
        raise ModelConfigError(
            f"{source}: unsupported architecture {archs[0]!r}; supported: {supported}"
        )
    model_type = data.get("model_type")
    if model_type in _MODEL_TYPES:
        return _MODEL_TYPES[model_type]
    if model_type is None:
        raise ModelConfigError(f"{source}: missing key 'architectures' (one of {supported})")
    raise ModelConfigError(
        f"{source}: unsupported model_type {model_type!r}; supported: {supported}"
    )
