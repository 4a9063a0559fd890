"""Whether a set of timed repeats can be trusted: their spread, the scheduler-tick pattern and
the contention seen while they ran.

A kernel timed while another job holds one of its cores reads slow, and often consistently
so: a parallel kernel waits at its closing barrier for the thread that lost its core, about
one scheduler tick (4 ms) per call. `timing_stats` drops the repeats whose threads waited for
a core or that ran whole ticks slow, `judge` turns what is left into the reasons an attempt is
noisy (none when it is clean), and `guarded_timing` re-times a noisy attempt, so the runner can
record the trial as `noisy` instead of storing a wrong time. Pure functions: the readings come
from cpu_load and gpu_load.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NoiseLimits:
    """When a repeat is contended and an attempt noisy; MeasureConfig holds these (see
    docs/workers.md).

    A repeat is contended when the worker's threads waited for a core more than
    `max_wait_share` of its time (0.25 = a quarter of one thread's time), or when it ran a
    whole number of scheduler ticks (`tick_ms`) slower than the fastest repeat, and that
    delay is more than `max_spread` of the fastest. An attempt is noisy when fewer than
    `min_clean_share` of its repeats are clean, or the clean ones' spread (interquartile
    range / median) exceeds `max_spread`. `max_other_load` (other processes' share of the
    worker's cores) is what the runner waits for before re-timing.
    """

    max_spread: float = 0.2
    tick_ms: float = 4.0
    max_wait_share: float = 0.25
    min_clean_share: float = 0.5
    max_other_load: float = 0.5


@dataclass(frozen=True)
class TimingStats:
    """Summary of one attempt's repeats (per-call times in ms); median and spread are of the
    clean repeats."""

    repeats: int
    clean: int  # repeats neither waited for a core nor tick-delayed
    median_ms: float
    min_ms: float
    spread: float  # interquartile range / median of the clean repeats
    tick_hits: int  # repeats a whole number of scheduler ticks slower than the fastest
    waited: int  # repeats whose threads waited for a core too long

    def describe(self) -> str:
        """One line for a result's message."""
        return (
            f"median {self.median_ms:.4g} ms, min {self.min_ms:.4g} ms, spread {self.spread:.2f};"
            f" of {self.repeats} repeats {self.clean} clean, {self.tick_hits} tick-delayed,"
            f" {self.waited} waited for a core"
        )


@dataclass(frozen=True)
class Contention:
    """What else ran while an attempt was timed (shares of wall time; 0 when unknown)."""

    repeat_waits: tuple[float, ...] = ()  # per repeat: the worker's threads waiting for a core
    wait_share: float = 0.0  # the same over the whole attempt, warm-up included
    other_load: float = 0.0  # other processes' use of the worker's cores, 0..1
    notes: tuple[str, ...] = ()  # device checks that failed (a GPU's clocks, its other users)

    def describe(self) -> str:
        """One line for a result's message."""
        return f"waited for a core {self.wait_share:.2f}, others' load {self.other_load:.2f}"


def spread(timings_ms: Sequence[float]) -> float:
    """Interquartile range over median; 0 for fewer than two repeats."""
    if len(timings_ms) < 2:
        return 0.0
    median = statistics.median(timings_ms)
    q1, _, q3 = statistics.quantiles(timings_ms, n=4, method="inclusive")
    return (q3 - q1) / median if median > 0 else 0.0


def tick_delayed(
    timings_ms: Sequence[float],
    calls_per_repeat: int,
    tick_ms: float,
    min_delay: float = 0.0,
    tolerance: float = 0.25,
) -> list[bool]:
    """Per repeat: is it slower than the fastest by a whole number (>= 1) of scheduler ticks,
    and by more than `min_delay` of the fastest?

    A repeat's delay is (its per-call time - the fastest) x calls, the total its calls spent
    waiting. A thread descheduled for a tick holds its barrier a whole tick, so a repeat hit
    k times is k ticks (within `tolerance` of a tick) slower; ordinary jitter is not.
    """
    if not timings_ms or tick_ms <= 0:
        return [False] * len(timings_ms)
    fastest = min(timings_ms)
    flags = []
    for t in timings_ms:
        ticks = (t - fastest) * max(calls_per_repeat, 1) / tick_ms
        whole = round(ticks)
        flags.append(
            whole >= 1 and abs(ticks - whole) <= tolerance and t - fastest > min_delay * fastest
        )
    return flags


def timing_stats(
    timings_ms: Sequence[float],
    calls_per_repeat: int,
    contention: Contention,
    limits: NoiseLimits,
) -> TimingStats:
    """The attempt's stats; its median and spread are of the clean repeats (of all repeats
    when none is clean)."""
    ticks = tick_delayed(timings_ms, calls_per_repeat, limits.tick_ms, limits.max_spread)
    waits = list(contention.repeat_waits) + [0.0] * (len(timings_ms) - len(contention.repeat_waits))
    waited = [w > limits.max_wait_share for w in waits]
    kept = [t for t, a, b in zip(timings_ms, ticks, waited, strict=False) if not (a or b)]
    basis = kept or list(timings_ms)
    stats = TimingStats(
        repeats=len(timings_ms),
        clean=len(kept),
        median_ms=statistics.median(basis) if basis else 0.0,
        min_ms=min(timings_ms) if timings_ms else 0.0,
        spread=spread(basis),
        tick_hits=sum(ticks),
        waited=sum(waited),
    )
    return stats


def judge(stats: TimingStats, contention: Contention, limits: NoiseLimits) -> list[str]:
    """Why this attempt cannot be trusted; empty when it can."""
    reasons = []
    if stats.clean < limits.min_clean_share * stats.repeats:
        reasons.append(
            f"only {stats.clean} of {stats.repeats} repeats clean"
            f" (< {limits.min_clean_share:g}): {stats.waited} waited for a core"
            f" > {limits.max_wait_share:g} of their time, {stats.tick_hits} ran whole"
            f" {limits.tick_ms:g} ms ticks slow"
        )
    if stats.spread > limits.max_spread:
        reasons.append(f"spread {stats.spread:.2f} > {limits.max_spread:g}")
    reasons.extend(contention.notes)
    return reasons


@dataclass(frozen=True)
class Attempt:
    """One timing of a candidate: its repeats, their stats, the contention and the verdict."""

    timings_ms: tuple[float, ...]  # every repeat; the stats' median is of the clean ones
    calls_per_repeat: int
    stats: TimingStats
    contention: Contention
    reasons: tuple[str, ...]  # empty: clean

    def describe(self) -> str:
        """The stats and contention, for a result's message."""
        return f"{self.stats.describe()}; {self.contention.describe()}"


TimeOnce = Callable[[], tuple[Sequence[float], int, Contention]]


def guarded_timing(
    time_once: TimeOnce,
    limits: NoiseLimits,
    retimes: int,
    deadline: float,
    before_retime: Callable[[], None] = lambda: None,
) -> tuple[Attempt, int]:
    """Time until an attempt is clean, at most 1 + `retimes` attempts and not past `deadline`
    (a time.monotonic() value); returns the clean attempt, or else the fastest noisy one, and
    the attempts made. `before_retime` runs before each attempt after a noisy one (to wait
    for quiet), so a quiet machine pays nothing for the guard."""
    best: Attempt | None = None
    attempts = 0
    while True:
        if attempts:
            before_retime()
        timings, number, seen = time_once()
        stats = timing_stats(timings, number, seen, limits)
        attempt = Attempt(tuple(timings), number, stats, seen, tuple(judge(stats, seen, limits)))
        attempts += 1
        if not attempt.reasons:
            return attempt, attempts
        if best is None or stats.median_ms < best.stats.median_ms:
            best = attempt
        if attempts > retimes or time.monotonic() >= deadline:
            return best, attempts
