"""What a record must pass to enter a database by import or merge, or to stay answerable.

A check is a `Verifier`: given a record with its target and workload it returns why the record
is unsound, or None. The database package checks times itself (`timings_check`); whether a
trace replays needs the IR, so that check is passed in by the caller (the `tunefleet db`
commands use `tunefleet.tuner.record_checks`).
"""

from __future__ import annotations

from collections.abc import Callable

from tunefleet.database.records import CommittedRecord, NewRecord, TargetInfo, WorkloadInfo

Verifier = Callable[[TargetInfo, WorkloadInfo, CommittedRecord], str | None]

# An ok record carries at least this many repeats, and its median agrees with theirs within
# this fraction: the runner reports the median of the repeats it timed.
MIN_REPEATS = 3
MEDIAN_TOLERANCE = 0.10


def implausible_timing(record: NewRecord) -> str | None:
    """Why the times of a record cannot come from a real measurement, or None if they can.

    An ok record needs a positive median, at least MIN_REPEATS positive repeats, and a median
    within MEDIAN_TOLERANCE of the median of those repeats; a failed one carries no median.
    """
    timings = sorted(record.timings_ms)
    median = record.median_ms
    if record.status != "ok":
        return None if median is None else f"a {record.status} record has a median ({median} ms)"
    if median is None or median <= 0:
        return f"an ok record needs a positive median_ms (got {median!r})"
    if len(timings) < MIN_REPEATS:
        return f"an ok record needs at least {MIN_REPEATS} timings (got {len(timings)})"
    if timings[0] <= 0:
        return f"timings must be positive (got {timings[0]} ms)"
    half = len(timings) // 2
    of_timings = timings[half] if len(timings) % 2 else (timings[half - 1] + timings[half]) / 2
    if abs(of_timings - median) > MEDIAN_TOLERANCE * of_timings:
        return (
            f"median_ms {median} disagrees with the median of its {len(timings)} timings "
            f"({of_timings:.6g} ms)"
        )
    return None


def timings_check(
    target: TargetInfo, workload: WorkloadInfo, record: CommittedRecord
) -> str | None:
    """The Verifier form of `implausible_timing` (target and workload do not matter to it)."""
    return implausible_timing(record)


def all_of(*verifiers: Verifier) -> Verifier:
    """A Verifier that runs `verifiers` in order and reports the first reason found."""

    def verify(target: TargetInfo, workload: WorkloadInfo, record: CommittedRecord) -> str | None:
        for check in verifiers:
            reason = check(target, workload, record)
            if reason is not None:
                return reason
        return None

    return verify
