"""The noise guard: synthetic repeats and /proc and nvidia-smi readings it must judge right."""

from __future__ import annotations

import time

import pytest

from tunefleet.workers import cpu_load, gpu_load
from tunefleet.workers.noise import (
    Contention,
    NoiseLimits,
    guarded_timing,
    judge,
    spread,
    tick_delayed,
    timing_stats,
)
from tunefleet.workers.results import MeasureConfig, MeasureResult, Status

LIMITS = NoiseLimits()
QUIET = Contention()


def _verdict(timings, calls=1, seen=QUIET, limits=LIMITS):
    stats = timing_stats(timings, calls, seen, limits)
    return stats, judge(stats, seen, limits)


def test_repeats_at_whole_ticks_above_the_fastest_are_noisy():
    # the 256^3 matmul: 0.19 ms quiet, contended calls one or two 4 ms ticks late
    timings = [0.19, 8.19, 4.2, 0.19, 8.18, 4.19, 0.2, 8.2, 4.18, 8.19]
    assert tick_delayed(timings, 1, 4.0, 0.2).count(True) == 7
    stats, reasons = _verdict(timings)
    assert stats.clean == 3 and stats.tick_hits == 7
    assert reasons and "clean" in reasons[0]


def test_ticks_spread_over_many_calls_of_a_repeat_are_found():
    # 100 calls of 10 us a repeat; two repeats lost one 4 ms tick each (+40 us a call)
    timings = [0.010] * 8 + [0.050, 0.0501]
    assert tick_delayed(timings, 100, 4.0, 0.2) == [False] * 8 + [True, True]
    stats, reasons = _verdict(timings, calls=100)
    assert reasons == [] and stats.clean == 8 and stats.median_ms == pytest.approx(0.010)


def test_a_few_hit_repeats_leave_the_median_of_the_clean_ones():
    timings = [0.19, 0.191, 4.19, 0.19, 0.192, 0.19, 8.19, 0.19, 0.191, 0.19]
    stats, reasons = _verdict(timings)
    assert reasons == []
    assert stats.clean == 8 and stats.median_ms == pytest.approx(0.19, rel=0.01)


def test_jitter_of_a_long_kernel_is_not_a_tick():
    # 50 ms kernel, +-8%: 4 ms differences, but a small share of the kernel's time
    timings = [50.0, 54.0, 50.5, 46.1, 52.0, 49.0, 54.1, 50.2, 47.0, 51.0]
    assert not any(tick_delayed(timings, 1, 4.0, 0.2))
    assert _verdict(timings)[1] == []


def test_a_wide_spread_is_noisy():
    timings = [1.0, 1.6, 0.8, 1.3, 2.0, 0.9, 1.45, 1.1, 0.7, 1.8]
    assert spread(timings) > 0.2
    reasons = _verdict(timings)[1]
    assert any(r.startswith("spread") for r in reasons)


def test_uniformly_slow_repeats_are_caught_by_the_time_spent_waiting_for_a_core():
    # every call waited at the barrier for a descheduled thread: no spread, no ticks between
    # repeats, but the threads were runnable and off-core most of each repeat
    timings = [7.65, 7.66, 7.64, 7.65, 7.67, 7.65, 7.66, 7.65, 7.64, 7.65]
    assert _verdict(timings)[1] == []  # from timings alone it looks perfect
    seen = Contention(repeat_waits=(0.9,) * 10, wait_share=0.9)
    stats, reasons = _verdict(timings, seen=seen)
    assert stats.waited == 10 and stats.clean == 0 and reasons


def test_device_notes_make_an_attempt_noisy():
    seen = Contention(notes=("1 other process(es) on the GPU",))
    assert _verdict([1.0] * 5, seen=seen)[1] == ["1 other process(es) on the GPU"]


def test_without_the_guard_nothing_is_noisy():
    limits = MeasureConfig(guard_noise=False).noise_limits
    seen = Contention(repeat_waits=(1.0,) * 4, wait_share=1.0)
    assert _verdict([0.19, 8.19, 4.2, 12.0], seen=seen, limits=limits)[1] == []


def _sequence(*attempts):
    """A time_once that returns the given (timings, waits) attempts in turn."""
    it = iter(attempts)

    def once():
        timings, waits = next(it)
        return timings, 1, Contention(repeat_waits=waits)

    return once


NOISY = ([0.19, 8.19, 4.2, 8.2, 4.19], (0.0,) * 5)
CLEAN = ([0.2, 0.21, 0.2, 0.2, 0.2], (0.0,) * 5)


def test_a_noisy_attempt_is_re_timed_after_waiting():
    waits = []
    attempt, n = guarded_timing(
        _sequence(NOISY, NOISY, CLEAN), LIMITS, 3, time.monotonic() + 60, lambda: waits.append(1)
    )
    assert n == 3 and len(waits) == 2 and attempt.reasons == ()
    assert attempt.stats.median_ms == pytest.approx(0.2)


def test_re_timing_stops_after_the_retimes_or_the_deadline():
    attempt, n = guarded_timing(_sequence(NOISY, NOISY, NOISY), LIMITS, 2, time.monotonic() + 60)
    assert n == 3 and attempt.reasons
    attempt, n = guarded_timing(_sequence(NOISY, CLEAN), LIMITS, 5, time.monotonic() - 1)
    assert n == 1 and attempt.reasons


def test_a_noisy_result_keeps_its_evidence_but_no_time():
    attempt, n = guarded_timing(_sequence(NOISY, NOISY), LIMITS, 1, time.monotonic() + 60)
    result = MeasureResult.timed(attempt, n, 0.0, 1, time.perf_counter(), "cpu")
    assert result.status is Status.NOISY and not result.ok
    assert result.median_ms is None and result.timings_ms == tuple(NOISY[0])
    assert result.attempts == 2 and result.spread is not None
    assert result.message.startswith("noisy in 2 attempts") and "tick" in result.message
    clean, n = guarded_timing(_sequence(CLEAN), LIMITS, 1, time.monotonic() + 60)
    ok = MeasureResult.timed(clean, n, 0.0, 1, time.perf_counter(), "cpu")
    assert ok.status is Status.OK and ok.median_ms == pytest.approx(0.2) and ok.attempts == 1


PROC_STAT = """\
cpu  300 0 100 5000 0 0 0 0 0 0
cpu0 100 0 50 2500 7 1 2 3 0 0
cpu1 200 0 50 2500 0 0 0 0 0 0
intr 12345
"""


def test_proc_readings_are_parsed():
    assert cpu_load.parse_schedstat("18076240 27500093 8\n") == (18076240, 27500093)
    assert cpu_load.parse_schedstat("") == (0, 0)
    # busy = user nice system irq softirq steal (iowait left out), in 10 ms ticks
    assert cpu_load.parse_proc_stat(PROC_STAT, {0}, 10_000_000) == 156 * 10_000_000
    assert cpu_load.parse_proc_stat(PROC_STAT, {0, 1}, 1) == 156 + 250


def test_contention_is_others_use_of_our_cores_and_our_time_off_core():
    ms = 1_000_000
    before = cpu_load.CpuSample(0, 0, 0, 1000 * ms, 2)
    # 100 ms on 2 cores: 200 ms of core time all busy, 80 of it ours; our threads waited 60
    after = cpu_load.CpuSample(100 * ms, 80 * ms, 60 * ms, 1200 * ms, 2)
    seen = cpu_load.contention(before, after)
    assert seen.other_load == pytest.approx(0.6) and seen.wait_share == pytest.approx(0.6)
    assert cpu_load.contention(after, after) == Contention()


def test_this_process_has_readable_counters():
    sample = cpu_load.sample_cpu()
    assert sample.cores >= 1 and sample.wall_ns > 0
    assert cpu_load.own_wait_ns() >= 0


def test_gpu_readings_are_parsed_and_judged():
    assert gpu_load.parse_clocks("1980, 1980\n") == (1980.0, 1980.0)
    assert gpu_load.parse_clocks("[N/A], 1980\n") == (None, 1980.0)
    assert gpu_load.parse_processes("1234\n5678\n") == 2
    assert gpu_load.parse_processes("") == 0
    assert gpu_load.parse_reasons("0x0000000000000001\n") == 1
    assert gpu_load.parse_reasons("[N/A]\n") is None
    # an idle device: low clock, idle reason, our own process only: nothing to say
    assert gpu_load.notes(gpu_load.GpuState(1, 345.0, 1980.0, 0x1)) == ()
    # a long GEMM at its power cap is the device working as designed
    assert gpu_load.notes(gpu_load.GpuState(1, 1755.0, 1980.0, 0x4)) == ()
    hot = gpu_load.notes(gpu_load.GpuState(3, 900.0, 1980.0, 0x40 | 0x4))
    assert hot == ("GPU clock held back by hardware thermal slowdown (SM 900 of 1980 MHz)",)
    shared = gpu_load.notes(gpu_load.GpuState(3, 1980.0, 1980.0, 0), count_processes=True)
    assert shared == ("2 other process(es) on the GPU",)


def test_gpu_watch_queries_nvidia_smi_and_skips_without_it():
    calls = []

    def fake(args):
        calls.append(args)
        if any("reasons" in a for a in args):
            return "0x0000000000000008\n"
        return "900, 1980\n" if any("clocks" in a for a in args) else "11\n22\n"

    watch = gpu_load.GpuWatch("00000000:01:00.0", count_processes=True, interval_s=60,
                              run=fake, smi="smi")  # fmt: skip
    assert watch.notes() == (
        "GPU clock held back by hardware slowdown (SM 900 of 1980 MHz)",
        "1 other process(es) on the GPU",
    )
    assert calls[0][:3] == ["smi", "-i", "00000000:01:00.0"]
    watch.notes()
    assert len(calls) == 3  # cached within the interval
    watch.refresh()
    watch.notes()
    assert len(calls) == 6
    assert gpu_load.GpuWatch("0", smi="").notes() == ()
