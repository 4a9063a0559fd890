"""The shared memory a session's CUDA kernels need at its largest sizes, against what a block
of the GPU may use.

A kernel whose shared arrays grow with the kv length (attention keeps a row's scores in
shared memory) launches at any length up to the one where it outgrows the multiprocessor;
there the launch would fail in the middle of a generation. A session checks every kernel it
can reach at its `max_len` and `max_prompt` when it is made, and refuses in one line.
"""

from __future__ import annotations

from collections.abc import Mapping

from tunefleet.runtime.manifest import KernelEntry, Manifest
from tunefleet.workers.launch import evaluate


def _reach(
    kernel: KernelEntry, symbolic: tuple[str, ...], top: Mapping[str, int]
) -> dict[str, int] | None:
    """The largest sizes a session with dims up to `top` runs `kernel` at (its point for an
    exact kernel), or None when none of its bucket's sizes is reachable."""
    if kernel.exact:
        point = {s: kernel.bucket[s] for s in symbolic}
        return point if all(kernel.ranges[s][0] <= top[s] for s in symbolic) else None
    sizes = {}
    for s in symbolic:
        low, high = kernel.ranges[s]
        size = top[s] if not high else min(high, top[s])
        if size < low:
            return None
        sizes[s] = size
    return sizes


def shared_memory_overflow(
    manifest: Manifest, limit: int, tops: Mapping[str, Mapping[str, int]]
) -> str | None:
    """A one-line error for the first kernel that needs more than `limit` bytes of shared
    memory per block at the sizes a session reaches (`tops`: phase -> the largest dims of
    that phase), None when all fit."""
    for task in manifest.tasks:
        top = tops.get(task.phase)
        if top is None:
            continue
        for kernel in (*task.kernels, task.fallback):
            if kernel.launch is None:
                continue
            sizes = _reach(kernel, task.symbolic, top)
            if sizes is None:
                continue
            need = evaluate(kernel.launch.shared_bytes, {**top, **sizes})
            if need > limit:
                at = ", ".join(f"{s}={v}" for s, v in sizes.items())
                return (
                    f"{task.phase}/{task.name} needs {need // 1024} KB of shared memory per "
                    f"block at {at}, more than the {limit // 1024} KB this GPU allows; start "
                    "the session with a smaller max_len (or max_prompt)"
                )
    return None
