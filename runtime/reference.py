"""The numpy reference model: the same forward pass written plainly over the canonical
weights, in float64, from the op library's references (`ir.ops`: rmsnorm, rope, softmax,
silu_mul, gelu), so it shares no layout code with the runtime it checks.

It follows the Hugging Face definitions: the query scaled by 1/sqrt(d) in the scores, Gemma's
norm as `1 + weight` and its embedding times sqrt(hidden), rope pairing element j with j + d/2,
causal attention over the cache, grouped-query heads.
"""

from __future__ import annotations

import math

import numpy as np

from tunefleet.ir.ops import get_op
from tunefleet.runtime.weights import Weights


class ReferenceModel:
    """Prefill and decode like `Session`, in float64 numpy, one sequence set at a time."""

    def __init__(self, weights: Weights) -> None:
        self.w = weights
        self.cfg = weights.config
        self.k_cache: list[np.ndarray] = []
        self.v_cache: list[np.ndarray] = []
        self.length = 0

    def prefill(self, ids: np.ndarray) -> np.ndarray:
        """Logits `[batch, n, vocab]` of prompts `ids[batch, n]`."""
        self.k_cache, self.v_cache, self.length = [], [], 0
        return self._forward(np.asarray(ids))

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """Logits `[batch, vocab]` of one more token per sequence."""
        return self._forward(np.asarray(ids)[:, None])[:, 0]

    def _forward(self, ids: np.ndarray) -> np.ndarray:
        cfg, w = self.cfg, self.w
        b, n = ids.shape
        h, kv, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        plus = 1.0 if cfg.family == "gemma" else 0.0
        rms, rope = get_op("rmsnorm").reference, get_op("rope").reference
        f = lambda a: np.asarray(a, np.float64)  # noqa: E731

        def norm(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
            return f(rms(x.reshape(-1, x.shape[-1]), f(weight) + plus, eps=cfg.norm_eps)
                     ).reshape(x.shape)  # fmt: skip

        def lin(x: np.ndarray, name: str) -> np.ndarray:
            y = x @ f(w[name]).T
            bias = w.get(name + "_bias")
            return y if bias is None else y + f(bias)

        pos = np.arange(self.length, self.length + n, dtype=np.float64)
        inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
        cos, sin = np.cos(pos[:, None] * inv), np.sin(pos[:, None] * inv)

        x = f(w["embed"])[ids]
        if cfg.scale_embedding:
            x = x * math.sqrt(cfg.hidden_size)
        for i in range(cfg.num_layers):
            p = f"layers.{i}."
            hn = norm(x, w[p + "input_norm"])
            q = lin(hn, p + "q").reshape(b, n, h, d)
            k = lin(hn, p + "k").reshape(b, n, kv, d)
            v = lin(hn, p + "v").reshape(b, n, kv, d)
            q = np.stack([f(rope(q[s], cos, sin)) for s in range(b)])
            k = np.stack([f(rope(k[s], cos, sin)) for s in range(b)])
            if i == len(self.k_cache):
                self.k_cache.append(k)
                self.v_cache.append(v)
            else:
                self.k_cache[i] = np.concatenate([self.k_cache[i], k], axis=1)
                self.v_cache[i] = np.concatenate([self.v_cache[i], v], axis=1)
            keys = np.repeat(self.k_cache[i], h // kv, axis=2)  # [b, m, h, d]
            vals = np.repeat(self.v_cache[i], h // kv, axis=2)
            m = keys.shape[1]
            scores = np.einsum("bnhd,bmhd->bhnm", q, keys) / math.sqrt(d)
            visible = np.arange(m)[None, :] <= (np.arange(n) + m - n)[:, None]
            scores = np.where(visible, scores, -np.inf)
            probs = f(get_op("softmax").reference(scores.reshape(-1, m))).reshape(scores.shape)
            ctx = np.einsum("bhnm,bmhd->bnhd", probs, vals).reshape(b, n, h * d)
            x = x + lin(ctx, p + "o")
            hn = norm(x, w[p + "post_norm"])
            gate, up = lin(hn, p + "gate"), lin(hn, p + "up")
            if cfg.activation == "silu":
                act = gate / (1.0 + np.exp(-gate)) * up
            else:
                act = f(get_op("gelu").reference(gate, approximate="tanh")) * up
            x = x + lin(act, p + "down")
        self.length += n
        return norm(x, w["final_norm"]) @ f(w["lm_head"]).T
