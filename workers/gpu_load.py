"""Contention on a GPU, read through nvidia-smi: other processes on the device and its clock.

Another process's kernels share the device's SMs and memory bandwidth, and a GPU held back
by power or heat runs its SMs below their maximum clock; either makes a timing wrong. The
CUDA runner adds what `GpuWatch.notes` finds to each attempt's contention, so such an attempt
is re-timed and, if it stays so, recorded `noisy`. Without nvidia-smi there are no notes.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

QUERY_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GpuState:
    """What nvidia-smi reports for one device: its compute processes and SM clocks (MHz)."""

    processes: int
    sm_clock_mhz: float | None
    max_sm_clock_mhz: float | None


def parse_clocks(text: str) -> tuple[float | None, float | None]:
    """(SM clock, max SM clock) from `--query-gpu=clocks.sm,clocks.max.sm` csv output."""
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    values = []
    for part in line.split(",")[:2]:
        try:
            values.append(float(part.strip().split()[0]))
        except (ValueError, IndexError):
            values.append(None)
    while len(values) < 2:
        values.append(None)
    return values[0], values[1]


def parse_processes(text: str) -> int:
    """The number of compute processes in `--query-compute-apps=pid` csv output."""
    return sum(1 for ln in text.splitlines() if ln.strip() and ln.strip().split(",")[0].isdigit())


def notes(state: GpuState, min_clock_share: float) -> tuple[str, ...]:
    """Why timings on a device in `state` cannot be trusted; the measuring process is one of
    its compute processes (its pid may differ from the one nvidia-smi sees in a container)."""
    found = []
    others = state.processes - 1
    if others > 0:
        found.append(f"{others} other process(es) on the GPU")
    sm, top = state.sm_clock_mhz, state.max_sm_clock_mhz
    if sm is not None and top and sm < min_clock_share * top:
        found.append(f"SM clock {sm:g} MHz < {min_clock_share:g} of its {top:g} MHz maximum")
    return tuple(found)


Run = Callable[[list[str]], str]


def _nvidia_smi(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S, check=True)
    return done.stdout


class GpuWatch:
    """Queries one device (by index or PCI bus id) at most every `interval_s` seconds, so a
    stream of short candidates does not wait on nvidia-smi each time."""

    def __init__(
        self,
        device_id: str,
        min_clock_share: float,
        interval_s: float = 2.0,
        run: Run | None = None,
        smi: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.min_clock_share = min_clock_share
        self.interval_s = interval_s
        self.smi = smi if smi is not None else shutil.which("nvidia-smi")
        self._run = run or _nvidia_smi
        self._last = -float("inf")
        self._notes: tuple[str, ...] = ()

    def state(self) -> GpuState | None:
        """The device's state now, or None without nvidia-smi (or when it fails)."""
        if not self.smi:
            return None
        base = [self.smi, "-i", self.device_id, "--format=csv,noheader,nounits"]
        try:
            clocks = parse_clocks(self._run([*base, "--query-gpu=clocks.sm,clocks.max.sm"]))
            apps = parse_processes(self._run([*base, "--query-compute-apps=pid"]))
        except (OSError, subprocess.SubprocessError):
            return None
        return GpuState(apps, *clocks)

    def refresh(self) -> None:
        """Query again at the next `notes()` (before re-timing)."""
        self._last = -float("inf")

    def notes(self) -> tuple[str, ...]:
        """The device's notes (see `notes`), refreshed when older than `interval_s`."""
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            state = self.state()
            self._notes = notes(state, self.min_clock_share) if state else ()
            self._last = now
        return self._notes
