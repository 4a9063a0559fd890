"""int4 weights quantised at load for the q4 tasks: eight 4-bit values to a uint32 word (the
value of column j sits at bits 4*(j % 8) of word j // 8, stored as q + 8), one float16 scale
per 32 columns, as `ir.ops` q4_dense reads them: w = (nibble - 8) * scale.

Symmetric per-group quantisation: the scale is the group's largest magnitude over 7 (rounded
to float16 first, and the values quantised with the rounded scale), so codes lie in [1, 15].
"""

from __future__ import annotations

import numpy as np

from tunefleet.coordinator.graph import Q4_GROUP
from tunefleet.ir.ops import dequantize_q4
from tunefleet.runtime.errors import RuntimeModelError


def quantize_q4(w: np.ndarray, group: int = Q4_GROUP) -> tuple[np.ndarray, np.ndarray]:
    """(qweight uint32 [n, k/8], scales float16 [n, k/group]) of a weight `w[n, k]`."""
    n, k = w.shape
    if k % group:
        raise RuntimeModelError(f"q4 needs input widths that are multiples of {group}, got {k}")
    grouped = np.asarray(w, np.float64).reshape(n, k // group, group)
    scales = (np.abs(grouped).max(axis=-1) / 7.0).astype(np.float16)
    safe = np.where(scales == 0, 1.0, scales.astype(np.float64))[..., None]
    codes = (np.clip(np.rint(grouped / safe), -8, 7) + 8).astype(np.uint32).reshape(n, k // 8, 8)
    shifts = (np.arange(8, dtype=np.uint32) * 4)[None, None, :]
    qweight = np.bitwise_or.reduce(codes << shifts, axis=-1).astype(np.uint32)
    return np.ascontiguousarray(qweight), np.ascontiguousarray(scales)


def dequantized(w: np.ndarray, group: int = Q4_GROUP) -> np.ndarray:
    """The float64 weights a q4 kernel computes with for `w` (quantised then unpacked)."""
    return dequantize_q4(*quantize_q4(w, group), group)
