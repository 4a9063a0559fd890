"""Roofline estimates: how long a task takes at best on a target, and its share of a pass.

A kernel takes at least max(FLOPs / peak FLOP/s, bytes / bandwidth). Peaks are achievable
numbers (a large matmul, a device-to-device copy), not datasheet ones, so the shares say where
tuning time pays off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class UnknownTargetError(ValueError):
    """A roofline target name that is not in `TARGETS`."""


@dataclass(frozen=True)
class RooflineTarget:
    """Achievable peak FLOP/s per dtype and memory bandwidth of a device."""

    name: str
    description: str
    bandwidth: float  # bytes/s, read + written
    flops_fp16: float  # FLOP/s for float16 and bfloat16 (tensor cores where there are)
    flops_fp32: float

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for arithmetic in `dtype`."""
        return self.flops_fp32 if dtype == "float32" else self.flops_fp16

    def seconds(self, flops: float, nbytes: float, dtype: str) -> float:
        """Lower bound on one call's time: the slower of compute and memory traffic."""
        return max(flops / self.peak_flops(dtype), nbytes / self.bandwidth)


TARGETS: dict[str, RooflineTarget] = {
    t.name: t
    for t in (
        # copy 3.00 TB/s and bf16 8192^3 matmul ~790 TFLOP/s measured; fp32 without tensor cores
        RooflineTarget("h100", "NVIDIA H100 80GB HBM3 (SXM)", 3.0e12, 790e12, 67e12),
        # same SMs as H100; HBM3e at 4.8 TB/s peak, ~4.3 TB/s copy at H100's efficiency
        RooflineTarget("h200", "NVIDIA H200 141GB HBM3e", 4.3e12, 790e12, 67e12),
        # 2.04 TB/s peak (~1.7 TB/s copy), 312 TFLOP/s bf16 peak (~280 reached)
        RooflineTarget("a100", "NVIDIA A100 80GB SXM", 1.7e12, 280e12, 19.5e12),
        # the 2-core AVX-512 reference machine: 26 GB/s DRAM GEMV, 221 GFLOP/s fp32 matmul;
        # fp16 is computed in fp32 on this CPU
        RooflineTarget("cpu", "2-core Cascade Lake (AVX-512)", 26e9, 221e9, 221e9),
    )
}


def get_target(name: str) -> RooflineTarget:
    """A roofline target by name; the error lists the known ones."""
    try:
        return TARGETS[name.lower()]
    except KeyError:
        raise UnknownTargetError(f"unknown target {name!r}; known: {', '.join(TARGETS)}") from None


def shares(
    items: Sequence[tuple[int, float, float]], target: RooflineTarget, dtype: str
) -> tuple[list[float], float]:
    """Each item's share of the pass time and the pass time, from (weight, flops, bytes)."""
    times = [w * target.seconds(f, b, dtype) for w, f, b in items]
    total = sum(times)
    return [t / total if total else 0.0 for t in times], total
