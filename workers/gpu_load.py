"""Contention on a GPU, read through nvidia-smi: clock slowdowns and other processes.

A GPU slowed by heat or a hardware brake runs its SMs below the clock the kernel would get,
and another process's kernels share the SMs and memory bandwidth; either makes a timing
wrong. The CUDA runner adds what `GpuWatch.notes` finds to each attempt's contention, so such
an attempt is re-timed and, if it stays so, recorded `noisy`. Without nvidia-smi there are no
notes.

The clock itself is no evidence: an idle H200 reads 345 of 1980 MHz between launches and
ramps up within the warm-up. The driver's slowdown reasons say why a clock is held back;
only thermal and hardware slowdowns count (idle, application clocks and the software power
cap that a long GEMM reaches by design do not). Another process is counted only on request
(`count_processes`): a process that merely holds a context, as the coordinator does after
detecting its targets, shows up too.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

QUERY_TIMEOUT_S = 5.0


# nvidia-smi's clocks_event_reasons bits that mean the GPU is slowed against its will
SLOWDOWNS = {
    0x8: "hardware slowdown",
    0x20: "software thermal slowdown",
    0x40: "hardware thermal slowdown",
    0x80: "hardware power brake",
}
REASON_FIELDS = ("clocks_event_reasons.active", "clocks_throttle_reasons.active")


@dataclass(frozen=True)
class GpuState:
    """What nvidia-smi reports for one device: its compute processes, SM clocks (MHz) and
    the active clock-event (slowdown) reasons as a bit mask."""

    processes: int
    sm_clock_mhz: float | None
    max_sm_clock_mhz: float | None
    reasons: int | None = None


def parse_reasons(text: str) -> int | None:
    """The bit mask of `--query-gpu=clocks_event_reasons.active` output ('0x...'), or None."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    try:
        return int(line, 16)
    except ValueError:
        return None


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


def notes(state: GpuState, count_processes: bool = False) -> tuple[str, ...]:
    """Why timings on a device in `state` cannot be trusted (see the module doc); the
    measuring process is one of its compute processes."""
    found = []
    slowed = [name for bit, name in SLOWDOWNS.items() if (state.reasons or 0) & bit]
    if slowed:
        sm, top = state.sm_clock_mhz, state.max_sm_clock_mhz
        clock = f" (SM {sm:g} of {top:g} MHz)" if sm is not None and top else ""
        found.append(f"GPU clock held back by {', '.join(slowed)}{clock}")
    others = state.processes - 1
    if count_processes and others > 0:
        found.append(f"{others} other process(es) on the GPU")
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
        count_processes: bool = False,
        interval_s: float = 2.0,
        run: Run | None = None,
        smi: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.count_processes = count_processes
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
        return GpuState(apps, *clocks, self._reasons(base))

    def _reasons(self, base: list[str]) -> int | None:
        for field in REASON_FIELDS:  # the older name on drivers before the rename
            try:
                return parse_reasons(self._run([*base, f"--query-gpu={field}"]))
            except (OSError, subprocess.SubprocessError):
                continue
        return None

    def refresh(self) -> None:
        """Query again at the next `notes()` (before re-timing)."""
        self._last = -float("inf")

    def notes(self) -> tuple[str, ...]:
        """The device's notes (see `notes`), refreshed when older than `interval_s`."""
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            state = self.state()
            self._notes = notes(state, self.count_processes) if state else ()
            self._last = now
        return self._notes
