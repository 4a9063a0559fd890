"""The memory plan of a session: every buffer allocated once, at the maximum sizes.

Activations are reused by every layer and both phases (the residual stream ping-pongs
between two buffers); the kv cache holds `max_len x batch` positions of every layer,
position-major (`[max_len, batch, kv, d]`: its first m rows are a decode step's attention
input as they stand); the staging buffers hold one prompt's keys and values key-major, the
prompt attention's input. Buffers hold the rows kernels run,
more than the actual tokens where an exact kernel pads up to its bucket point. A step
allocates nothing. Buffers are arrays of the backend's array module: numpy on the CPU,
cupy on the GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunefleet.coordinator.models import ModelConfig
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.workers.checking import storage_dtype

_SIZES = ("batch", "max_len", "max_prompt")


@dataclass(frozen=True)
class MemoryPlan:
    """Buffers of a session (flat unless noted) and the sizes they were planned for."""

    batch: int
    max_len: int
    max_prompt: int
    ids: Any  # int32 [tokens]; every buffer: an array of the backend's module
    tokens: Any  # int64 [batch]: greedy picks
    x0: Any
    x1: Any
    hn: Any
    qkv: Any
    q: Any
    ctx: Any
    ctx_t: Any
    act: Any
    cos: Any  # float32 [tokens * d/2]
    sin: Any
    cos_table: Any  # float32 [max_len, d/2]
    sin_table: Any
    k_cache: Any  # [layers, max_len, batch, kv, d]
    v_cache: Any
    k_stage: Any  # [kv * max_prompt * d]: one prompt's keys, [1, kv, n, d]
    v_stage: Any
    prefill_logits: Any  # [batch, prompt rows, vocab]
    decode_logits: Any  # [batch rows, vocab]

    @property
    def nbytes(self) -> int:
        """Bytes of every buffer of the plan."""
        return sum(v.nbytes for k, v in vars(self).items() if k not in _SIZES)

    @staticmethod
    def create(
        cfg: ModelConfig,
        batch: int,
        max_len: int,
        max_prompt: int | None = None,
        rows: Mapping[str, int] | None = None,
        xp: Any = np,
    ) -> MemoryPlan:
        """Allocate the buffers for `batch` sequences of at most `max_len` tokens, prompts
        of at most `max_prompt` (default `max_len`); `rows` gives the rows a kernel may run
        for the batch (`batch`) and a prompt (`prompt`) when exact kernels pad up to their
        bucket point (default: the sizes themselves). `xp` allocates: numpy or cupy."""
        max_prompt = max_len if max_prompt is None else max_prompt
        if batch < 1 or max_len < 1 or not 1 <= max_prompt <= max_len:
            raise RuntimeModelError(
                f"a session needs batch >= 1 and 1 <= max_prompt <= max_len, got batch={batch}, "
                f"max_prompt={max_prompt}, max_len={max_len}"
            )
        dt = storage_dtype(cfg.dtype)
        rows = rows or {}
        batch_rows = max(batch, rows.get("batch", batch))
        prompt_rows = max(max_prompt, rows.get("prompt", max_prompt))
        t = max(batch_rows, prompt_rows)
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        hid, big = cfg.hidden_size, cfg.num_heads + 2 * cfg.num_kv_heads

        def buf(*shape: int, dtype: np.dtype = dt) -> Any:
            return xp.zeros(shape, dtype=dtype)

        inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        angles = np.arange(max_len, dtype=np.float64)[:, None] * inv[None, :]
        cache = (cfg.num_layers, max_len, batch, kv, d)
        stage = kv * max_prompt * d
        return MemoryPlan(
            batch=batch,
            max_len=max_len,
            max_prompt=max_prompt,
            ids=buf(t, dtype=np.dtype(np.int32)),
            tokens=buf(batch, dtype=np.dtype(np.int64)),
            x0=buf(t * hid),
            x1=buf(t * hid),
            hn=buf(t * hid),
            qkv=buf(t * big * d),
            q=buf(t * h * d),
            ctx=buf(t * h * d),
            ctx_t=buf(t * h * d),
            act=buf(t * cfg.intermediate_size),
            cos=buf(t * (d // 2), dtype=np.dtype(np.float32)),
            sin=buf(t * (d // 2), dtype=np.dtype(np.float32)),
            cos_table=xp.asarray(np.cos(angles).astype(np.float32)),
            sin_table=xp.asarray(np.sin(angles).astype(np.float32)),
            k_cache=buf(*cache),
            v_cache=buf(*cache),
            k_stage=buf(stage),
            v_stage=buf(stage),
            prefill_logits=buf(batch, prompt_rows, cfg.vocab_size),
            decode_logits=buf(batch_rows, cfg.vocab_size),
        )

