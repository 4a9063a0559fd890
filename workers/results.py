"""Typed records that flow through the workers: build inputs, artifacts and measurement results.

Everything here is a frozen dataclass of plain values so it pickles across process pools and
Ray, and so the database can store it without unpickling anything. A kernel to build is the
IR's `KernelSource` itself (see builder.plain_kernel); an artifact keeps its call description
with `KernelArg`s whose dims are ints or expression text.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tunefleet.ir.codegen import KernelArg
from tunefleet.workers.noise import Attempt, NoiseLimits
from tunefleet.workers.targets import Target


class Status(StrEnum):
    """Outcome of building and measuring one candidate; every outcome is a recorded result."""

    OK = "ok"
    BUILD_ERROR = "build_error"
    RUN_ERROR = "run_error"
    TIMEOUT = "timeout"
    WRONG_RESULT = "wrong_result"
    NOISY = "noisy"  # checked correct, but every timing attempt ran under contention


@dataclass(frozen=True)
class Problem:
    """What a kernel must compute, so a runner can draw inputs and check outputs.

    `op` names an operator of `tunefleet.ir.ops`, or "module:attribute" naming any object with
    `make_inputs(dims, dtype, rng, **attrs)` and `reference(*inputs, **attrs)`.
    """

    op: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    attrs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def create(cls, op: str, dims: Mapping[str, int], dtype: str, **attrs: Any) -> Problem:
        """Build a Problem from a dims mapping and keyword attributes, in canonical order."""
        return cls(
            op=op,
            dims=tuple(sorted((str(k), int(v)) for k, v in dims.items())),
            dtype=str(dtype),
            attrs=tuple(sorted(attrs.items())),
        )

    @property
    def dim_values(self) -> dict[str, int]:
        return dict(self.dims)

    @property
    def attr_values(self) -> dict[str, Any]:
        return dict(self.attrs)

    @property
    def key(self) -> str:
        """A readable identity used to cache inputs per workload in a runner."""
        dims = ",".join(f"{k}={v}" for k, v in self.dims)
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs)
        return f"{self.op}[{dims}]:{self.dtype}" + (f"({attrs})" if attrs else "")


@dataclass(frozen=True)
class Artifact:
    """A compiled kernel: the binary's bytes (a shared library or a cubin) and how to call it.

    The bytes travel with the artifact so a runner on another node needs no shared filesystem;
    `target` is what it was built for, and picks the runners that may measure it.
    """

    key: str
    target: Target
    kernel_lang: str
    entry: str
    args: tuple[KernelArg, ...]
    binary: bytes = field(repr=False)
    grid: tuple[Any, ...] | None = None
    block: tuple[Any, ...] | None = None
    shared_bytes: Any = 0


@dataclass(frozen=True)
class BuildResult:
    """The outcome of one build: an artifact, or a build_error / timeout with the compiler's log."""

    status: Status
    artifact: Artifact | None
    message: str = ""
    build_s: float = 0.0
    cache_hit: bool = False


@dataclass(frozen=True)
class MeasureConfig:
    """How to check and time a candidate; stored with the record so a measurement is reproducible.

    Times are per kernel call. Each repeat runs enough calls to last at least `min_repeat_ms`
    (on the GPU a repeat is one launch when `flush_l2` is set).

    Noise guard (docs/workers.md, `noise.NoiseLimits`): with `guard_noise` a repeat is
    contended when the worker's threads waited for a core more than `max_wait_share` of its
    time or it ran whole `tick_ms` scheduler ticks slower than the fastest (by more than
    `max_spread`). An attempt is noisy when fewer than `min_clean_share` of its repeats are
    clean or the clean ones' spread (IQR / median) exceeds `max_spread`; the runner then
    waits up to `quiet_wait_s` for others' load on its cores to drop to `max_other_load` and
    re-times, up to `noise_retimes` more times within half of `timeout_s`. If no attempt is
    clean the result is `noisy`. The median is that of the clean repeats. On a GPU an attempt
    is also noisy while the driver reports a thermal or hardware slowdown of its clocks and,
    with `count_gpu_processes`, while another process holds the device (nvidia-smi, when
    installed; see `gpu_load`).
    """

    warmup_ms: float = 5.0
    repeats: int = 10
    min_repeat_ms: float = 1.0
    max_calls_per_repeat: int = 100_000
    timeout_s: float = 20.0
    flush_l2: bool = False
    rotate_inputs: bool = True
    max_input_sets: int = 64
    rtol: tuple[tuple[str, float], ...] = ()
    seed: int = 0
    guard_noise: bool = True
    noise_retimes: int = 3
    quiet_wait_s: float = 0.5
    max_spread: float = 0.2
    tick_ms: float = 4.0
    max_wait_share: float = 0.25
    min_clean_share: float = 0.5
    max_other_load: float = 0.5
    count_gpu_processes: bool = False

    @property
    def noise_limits(self) -> NoiseLimits:
        """The thresholds that make an attempt noisy (none at all without `guard_noise`)."""
        if not self.guard_noise:
            inf = float("inf")
            return NoiseLimits(inf, 0.0, inf, 0.0, inf)
        return NoiseLimits(
            self.max_spread,
            self.tick_ms,
            self.max_wait_share,
            self.min_clean_share,
            self.max_other_load,
        )

    def tolerance(self, dtype: str) -> float:
        """The relative tolerance for `dtype`: an explicit override, else the per-dtype default."""
        from tunefleet.workers.checking import default_tolerance

        return dict(self.rtol).get(dtype, default_tolerance(dtype))


@dataclass(frozen=True)
class RunInput:
    """One candidate for a runner: a built artifact and the problem it must solve."""

    artifact: Artifact
    problem: Problem
    config: MeasureConfig = field(default_factory=MeasureConfig)


@dataclass(frozen=True)
class MeasureResult:
    """The recorded outcome of one candidate: ok with timings, or a failure status and message.

    `device` and `target_fingerprint` name the device the worker measured on, as the worker
    process itself detected (or was configured to simulate); empty when nothing ran.
    """

    status: Status
    median_ms: float | None = None
    timings_ms: tuple[float, ...] = ()
    max_rel_err: float | None = None
    message: str = ""
    calls_per_repeat: int = 0
    input_sets: int = 0
    build_s: float = 0.0
    run_s: float = 0.0
    device: str = ""
    target_fingerprint: str = ""
    spread: float | None = None  # interquartile range / median of the kept repeats
    attempts: int = 0  # timing attempts made (more than 1: the first ones were noisy)

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @classmethod
    def timed(
        cls,
        attempt: Attempt,
        attempts: int,
        max_rel_err: float,
        input_sets: int,
        started: float,
        device: str,
    ) -> MeasureResult:
        """Ok with the attempt's timings and the median of its clean repeats when it is clean,
        else `noisy` (no median) saying why, with the fastest noisy attempt's timings."""
        result = cls.measured(
            list(attempt.timings_ms),
            attempt.calls_per_repeat,
            max_rel_err,
            input_sets,
            started,
            device,
        )
        result = dataclasses.replace(
            result,
            median_ms=attempt.stats.median_ms,
            spread=attempt.stats.spread,
            attempts=attempts,
        )
        if not attempt.reasons:
            return result
        message = (
            f"noisy in {attempts} attempts: {'; '.join(attempt.reasons)} ({attempt.describe()})"
        )
        return dataclasses.replace(result, status=Status.NOISY, median_ms=None, message=message)

    @classmethod
    def measured(
        cls,
        timings_ms: list[float],
        calls_per_repeat: int,
        max_rel_err: float,
        input_sets: int,
        started: float,
        device: str,
    ) -> MeasureResult:
        """An ok result: the median of the repeats, run time counted from `started`."""
        return cls(
            status=Status.OK,
            median_ms=statistics.median(timings_ms),
            timings_ms=tuple(timings_ms),
            max_rel_err=max_rel_err,
            calls_per_repeat=calls_per_repeat,
            input_sets=input_sets,
            run_s=time.perf_counter() - started,
            device=device,
        )

    @classmethod
    def failed(
        cls,
        status: Status,
        started: float,
        message: str,
        device: str,
        max_rel_err: float | None = None,
    ) -> MeasureResult:
        """A failure with its message, run time counted from `started`."""
        return cls(
            status=status,
            message=message,
            max_rel_err=max_rel_err,
            run_s=time.perf_counter() - started,
            device=device,
        )

    @classmethod
    def wrong(
        cls, bad: int, rtol: float, max_rel_err: float, started: float, device: str
    ) -> MeasureResult:
        """`bad` output elements outside the relative tolerance `rtol`."""
        message = f"{bad} elements off by more than {rtol:g} relative (max {max_rel_err:.3g})"
        return cls.failed(Status.WRONG_RESULT, started, message, device, max_rel_err)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (status as its string value)."""
        return {
            "status": self.status.value,
            "median_ms": self.median_ms,
            "timings_ms": list(self.timings_ms),
            "max_rel_err": self.max_rel_err,
            "message": self.message,
            "calls_per_repeat": self.calls_per_repeat,
            "input_sets": self.input_sets,
            "build_s": self.build_s,
            "run_s": self.run_s,
            "device": self.device,
            "target_fingerprint": self.target_fingerprint,
            "spread": self.spread,
            "attempts": self.attempts,
        }
