"""Contention on the cores a CPU worker uses, read from /proc around a measurement.

Two counters: the scheduler's run delay of every thread of this process (time runnable but
waiting for a core, /proc/self/task/*/schedstat, in ns), and the busy time of the cores in
the process's affinity mask (/proc/stat, in clock ticks) less this process's own CPU time,
which is what other processes took from those cores. Both read as 0 where /proc lacks them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tunefleet.workers.noise import Contention

_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user nice system irq softirq steal (not idle, iowait)


@dataclass(frozen=True)
class CpuSample:
    """A reading of the counters at one moment."""

    wall_ns: int
    own_cpu_ns: int  # this process's threads' CPU time
    own_wait_ns: int  # this process's threads' run delay
    cores_busy_ns: int  # busy time of the cores in use, every process included
    cores: int


def parse_schedstat(text: str) -> tuple[int, int]:
    """(CPU time ns, run delay ns) of one /proc/.../schedstat line."""
    parts = text.split()
    if len(parts) < 2:
        return 0, 0
    return int(parts[0]), int(parts[1])


def parse_proc_stat(text: str, cores: Iterable[int], tick_ns: int) -> int:
    """Busy time (ns) of `cores` summed from the per-core lines of /proc/stat."""
    wanted = {f"cpu{c}" for c in cores}
    busy = 0
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [int(v) for v in parts[1:]]
            busy += sum(values[i] for i in _BUSY_FIELDS if i < len(values))
    return busy * tick_ns


def _own_threads() -> tuple[int, int]:
    cpu = wait = 0
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            c, w = parse_schedstat((task / "schedstat").read_text())
        except (OSError, ValueError):
            continue  # the thread exited, or no schedstat in this kernel
        cpu, wait = cpu + c, wait + w
    return cpu, wait


def own_wait_ns() -> int:
    """The run delay (ns) of this process's threads so far: time runnable but not running."""
    return _own_threads()[1]


def sample_cpu(cores: frozenset[int] | None = None) -> CpuSample:
    """Read the counters now, for the cores in `cores` (default: this process's affinity)."""
    use = cores if cores is not None else frozenset(os.sched_getaffinity(0))
    tick_ns = 1_000_000_000 // max(os.sysconf("SC_CLK_TCK"), 1)
    try:
        busy = parse_proc_stat(Path("/proc/stat").read_text(), use, tick_ns)
    except (OSError, ValueError):
        busy = 0
    cpu, wait = _own_threads()
    return CpuSample(time.monotonic_ns(), cpu, wait, busy, len(use))


def contention(before: CpuSample, after: CpuSample) -> Contention:
    """The contention between two samples, as shares of the wall time between them."""
    wall = after.wall_ns - before.wall_ns
    if wall <= 0:
        return Contention()
    wait = max(after.own_wait_ns - before.own_wait_ns, 0) / wall
    others = (after.cores_busy_ns - before.cores_busy_ns) - (after.own_cpu_ns - before.own_cpu_ns)
    load = 0.0
    if before.cores_busy_ns:  # 0 where /proc/stat could not be read
        load = min(max(others / (wall * max(after.cores, 1)), 0.0), 1.0)
    return Contention(wait_share=wait, other_load=load)


def wait_for_quiet(
    max_load: float,
    timeout_s: float,
    cores: frozenset[int] | None = None,
    interval_s: float = 0.1,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[float, float]:
    """Wait (at most `timeout_s`) until others' load on `cores` is at most `max_load`.

    Returns (the last load seen, seconds waited). Sampling needs `interval_s` at least once,
    since /proc/stat counts in clock ticks (10 ms).
    """
    start = time.monotonic()
    load = 0.0
    while True:
        before = sample_cpu(cores)
        sleep(interval_s)
        load = contention(before, sample_cpu(cores)).other_load
        waited = time.monotonic() - start
        if load <= max_load or waited >= timeout_s:
            return load, waited
