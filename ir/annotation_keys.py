"""Every loop and block annotation key: what it means, what it attaches to, what values it takes.

`Schedule.annotate` calls `check_annotation` first, so a misspelt key or an out-of-range value
is refused when it is written instead of being ignored (or failing) at lowering. Readers in
ir/ and tuner/ use the constants below instead of string literals. Keys whose `by` is
"lowering" are written by lowering passes on the lowered IR only; `annotate` refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ScheduleError
from .intrinsics_wgmma import STORAGE_SWIZZLE, SWIZZLE_BYTES, WGMMA_BATCH
from .trace import RV

PIPELINE_STAGES = "software_pipeline_stages"
PIPELINE_FRAGMENTS = "software_pipeline_fragments"
AUTO_UNROLL = "auto_unroll_max_step"
HOIST_LOADS = "hoist_loads"
MIN_BLOCKS_PER_SM = "min_blocks_per_sm"
BLOCK_RASTERIZE = "block_rasterize"
TENSORIZE = "tensorize"
ASYNC_COPY = "async_copy"
STORAGE_ALIGN = "storage_align"
VECTOR_ACCESS = "vector_access"
HOISTED_LOADS = "hoisted_loads"
HOISTED_CALLS = "hoisted_calls"

__all__ = [
    "ASYNC_COPY",
    "AUTO_UNROLL",
    "BLOCK_RASTERIZE",
    "HOISTED_CALLS",
    "HOISTED_LOADS",
    "HOIST_LOADS",
    "MIN_BLOCKS_PER_SM",
    "PIPELINE_FRAGMENTS",
    "PIPELINE_STAGES",
    "REGISTRY",
    "STORAGE_ALIGN",
    "STORAGE_SWIZZLE",
    "TENSORIZE",
    "VECTOR_ACCESS",
    "WGMMA_BATCH",
    "AnnotationKey",
    "check_annotation",
    "registry_table",
]


@dataclass(frozen=True)
class AnnotationKey:
    """One registered key: `on` is "loop" or "block"; `check` says whether a value is good
    (`expects` says which are, in words); `sampled` allows an integer handle from sampling."""

    key: str
    on: str
    meaning: str
    expects: str
    check: Callable[[Any], bool]
    sampled: bool = False
    by: str = "schedule"  # "schedule" (annotate) | "lowering" (lowered IR only)


def _int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _flag(v: Any) -> bool:
    return v is True or (isinstance(v, int) and not isinstance(v, bool) and v in (0, 1))


def _written_by_lowering(v: Any) -> bool:
    """Values of lowering-only keys are plans built by a pass; annotate never writes them."""
    return False


def _align_spec(v: Any) -> bool:
    parts = v.rsplit(":", 2) if isinstance(v, str) else []
    return len(parts) == 3 and bool(parts[0]) and all(p.lstrip("-").isdigit() for p in parts[1:])


_KEYS = (
    AnnotationKey(
        PIPELINE_STAGES,
        "loop",
        "software-pipeline the loop's shared-memory copies over this many stages (pipeline.py)",
        "an int >= 2",
        _int_at_least(2),
        sampled=True,
    ),
    AnnotationKey(
        PIPELINE_FRAGMENTS,
        "loop",
        "with software_pipeline_stages: double-buffer register fragments one inner step ahead",
        "0 or 1",
        _flag,
        sampled=True,
    ),
    AnnotationKey(
        AUTO_UNROLL,
        "loop",
        "unroll serial nests under the loop that execute at most this many steps (0: off)",
        "an int >= 0",
        _int_at_least(0),
        sampled=True,
    ),
    AnnotationKey(
        HOIST_LOADS,
        "loop",
        "CUDA: issue an unrolled loop's wide global loads before their first use",
        "1",
        lambda v: v == 1,
    ),
    AnnotationKey(
        MIN_BLOCKS_PER_SM,
        "loop",
        "CUDA: second __launch_bounds__ argument (resident blocks per multiprocessor)",
        "an int >= 1",
        _int_at_least(1),
        sampled=True,
    ),
    AnnotationKey(
        BLOCK_RASTERIZE,
        "loop",
        "CUDA: run blocks in groups of this many blockIdx.y rows so they share tiles in L2",
        "an int >= 1",
        _int_at_least(1),
        sampled=True,
    ),
    AnnotationKey(
        WGMMA_BATCH,
        "loop",
        "CUDA sm_90: fence, issue the loop's wgmma ops as one group, wait until <= N pending",
        "an int >= 0",
        _int_at_least(0),
        sampled=True,
    ),
    AnnotationKey(
        TENSORIZE,
        "loop",
        "the loop nest is one step of the named tensor intrinsic (Schedule.tensorize)",
        "an intrinsic name (str)",
        lambda v: isinstance(v, str) and bool(v),
    ),
    AnnotationKey(
        STORAGE_ALIGN,
        "block",
        "pad the written buffer's rows: 'buffer:factor:offset' (Schedule.storage_align)",
        "a 'buffer:factor:offset' str",
        _align_spec,
    ),
    AnnotationKey(
        STORAGE_SWIZZLE,
        "block",
        "keep the written shared buffer in a swizzled layout of this many bytes per row",
        f"one of {SWIZZLE_BYTES}",
        lambda v: isinstance(v, int) and not isinstance(v, bool) and v in SWIZZLE_BYTES,
        sampled=True,
    ),
    AnnotationKey(
        ASYNC_COPY,
        "loop",
        "a pipeline copy's vector loop: on CUDA a 16-byte move becomes cp.async",
        "1",
        lambda v: v == 1,
        by="lowering",
    ),
    AnnotationKey(
        VECTOR_ACCESS,
        "loop",
        "CUDA: the loop's wide loads and store (pass_vectorize.VectorAccess); printed as is",
        "a VectorAccess",
        _written_by_lowering,
        by="lowering",
    ),
    AnnotationKey(
        HOISTED_LOADS,
        "loop",
        "CUDA: the wide global loads issued before the loop (pass_hoist.HoistedLoads)",
        "a HoistedLoads",
        _written_by_lowering,
        by="lowering",
    ),
    AnnotationKey(
        HOISTED_CALLS,
        "loop",
        "C: the invariant math calls computed once before the loop (pass_hoist)",
        "a tuple of Calls",
        _written_by_lowering,
        by="lowering",
    ),
)

REGISTRY: dict[str, AnnotationKey] = {k.key: k for k in _KEYS}


def check_annotation(key: str, value: Any, on: str) -> None:
    """Refuse (ScheduleError) an unknown key, a key on the wrong kind of node (`on` is "loop"
    or "block"), a key only lowering writes, or a value the key does not take."""
    spec = REGISTRY.get(key)
    if spec is None:
        known = ", ".join(sorted(k for k, s in REGISTRY.items() if s.by == "schedule"))
        raise ScheduleError(f"unknown annotation key {key!r}; known keys: {known}")
    if spec.by != "schedule":
        raise ScheduleError(f"annotation {key!r} is written by {spec.by}, not by annotate")
    if on != spec.on:
        raise ScheduleError(f"annotation {key!r} attaches to a {spec.on}, not a {on}")
    if isinstance(value, RV):
        if spec.sampled and value.kind == "v":
            return
        raise ScheduleError(
            f"annotation values for {key!r} must be {spec.expects}, not the handle {value!r}"
        )
    if not spec.check(value):
        raise ScheduleError(f"annotation values for {key!r} must be {spec.expects}, got {value!r}")


def registry_table() -> str:
    """The registry as a Markdown table (docs/ir.md holds a copy; a test keeps them equal)."""
    rows = ["| key | on | value | meaning |", "|---|---|---|---|"]
    for k in _KEYS:
        on = k.on if k.by == "schedule" else f"{k.on} (set by lowering)"
        rows.append(f"| `{k.key}` | {on} | {k.expects} | {k.meaning} |")
    return "\n".join(rows)
