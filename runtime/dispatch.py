"""Dispatch on symbolic shapes: which bucket holds an actual size, and the guard.

A symbolic dim with bucket values r0 < r1 < ... < rk splits the sizes into ranges: bucket 0
holds [1, r0], bucket i holds (r(i-1), ri], and the last bucket also takes every size above
rk. A call picks, for each symbolic dim of its task, the bucket holding the actual size; the
kernel of that bucket point then runs with the actual sizes as its scalar arguments.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tunefleet.runtime.errors import RuntimeModelError

UNBOUNDED = 0  # a range's upper end that has none (the last bucket)


def bucket_ranges(values: Sequence[int]) -> list[tuple[int, int]]:
    """The (low, high) sizes each bucket value holds, high 0 meaning unbounded."""
    reps = sorted(set(int(v) for v in values))
    if not reps or reps[0] < 1:
        raise RuntimeModelError(f"bucket values must be positive integers, got {list(values)}")
    out, low = [], 1
    for i, rep in enumerate(reps):
        out.append((low, UNBOUNDED if i == len(reps) - 1 else rep))
        low = rep + 1
    return out


def bucket_index(values: Sequence[int], size: int) -> int:
    """The index (into sorted `values`) of the bucket that holds `size`."""
    if size < 1:
        raise RuntimeModelError(f"a dim size must be at least 1, got {size}")
    for i, (_, high) in enumerate(bucket_ranges(values)):
        if high == UNBOUNDED or size <= high:
            return i
    raise AssertionError("unreachable: the last bucket is unbounded")


def in_range(size: int, low: int, high: int) -> bool:
    """The guard: does `size` lie in the bucket range [low, high] (high 0: unbounded)?"""
    return size >= low and (high == UNBOUNDED or size <= high)


def bucket_point(buckets: Mapping[str, Sequence[int]], dims: Mapping[str, int]) -> dict[str, int]:
    """The bucket value (representative) of each bucketed dim for actual sizes `dims`."""
    point = {}
    for name, values in buckets.items():
        reps = sorted(set(values))
        point[name] = reps[bucket_index(reps, int(dims[name]))]
    return point
