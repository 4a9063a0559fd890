"""Postprocessors: reject invalid candidates before they reach a builder.

Each is a small class in a registry; `check(sch, ctx)` returns None for a valid program or a
one-line reason. The CPU check generates the C source (catching programs that lower to
nothing buildable, such as thread-bound loops); the GPU check enforces per-block limits on
threads and shared memory (the target's opt-in limit) from the launch the code generator
describes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from tunefleet.ir.codegen import build_source
from tunefleet.ir.errors import IRError
from tunefleet.ir.schedule import Schedule
from tunefleet.workers.targets import Target, TargetKind

from .registry import load_entry
from .space import SpaceContext, SpaceError


@dataclass(frozen=True)
class GpuLimits:
    """Per-block limits of a CUDA device: the defaults hold on every sm_80+ card."""

    max_threads_per_block: int = 1024
    max_shared_bytes: int = 99 * 1024
    max_registers_per_thread: int = 255

    @staticmethod
    def for_target(target: Target) -> GpuLimits:
        """The limits of a CUDA target (detected, or its architecture's known defaults)."""
        return GpuLimits(
            max_threads_per_block=target.max_threads_per_block,
            max_shared_bytes=target.shared_memory_bytes,
        )

    @staticmethod
    def for_arch(arch: str) -> GpuLimits:
        """The limits of an architecture ("sm_90", "sm_90a", ...; unknown: the defaults)."""
        return GpuLimits.for_target(Target.cuda(arch))


class Postproc(ABC):
    """Validates one scheduled candidate."""

    name = "abstract"

    @abstractmethod
    def check(self, sch: Schedule, ctx: SpaceContext) -> str | None:
        """None when the candidate is valid, else why it is rejected."""


class VerifyCodegen(Postproc):
    """The program must lower and generate source for the target."""

    name = "verify_codegen"

    def check(self, sch: Schedule, ctx: SpaceContext) -> str | None:
        try:
            build_source(sch, target=ctx.kind.value)
        except (IRError, ValueError) as err:
            return f"codegen: {err}"
        return None


class VerifyGpuLimits(Postproc):
    """Threads per block and shared memory per block must fit the device."""

    name = "verify_gpu_limits"

    def __init__(self, limits: GpuLimits | None = None) -> None:
        self.limits = limits  # None: the limits of the context's architecture

    def check(self, sch: Schedule, ctx: SpaceContext) -> str | None:
        if not ctx.is_gpu:
            return None
        limits = self.limits or GpuLimits.for_target(ctx.target)
        try:
            src = build_source(sch, target=ctx.kind.value)
        except (IRError, ValueError) as err:
            return f"codegen: {err}"
        threads = 1
        for dim in src.block or ():
            if not isinstance(dim, int):
                return None  # symbolic launch: checked at run time
            threads *= dim
        if threads > limits.max_threads_per_block:
            return f"{threads} threads per block > {limits.max_threads_per_block}"
        shared = getattr(src, "shared_bytes", 0) or 0
        if isinstance(shared, int) and shared > limits.max_shared_bytes:
            return f"{shared} bytes of shared memory per block > {limits.max_shared_bytes}"
        return None


_REGISTRY: dict[str, str] = {
    "verify_codegen": "tunefleet.tuner.postproc:VerifyCodegen",
    "verify_gpu_limits": "tunefleet.tuner.postproc:VerifyGpuLimits",
}


def create_postproc(name: str) -> Postproc:
    """A postprocessor by registry name."""
    cls = load_entry(_REGISTRY, name)
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise SpaceError(f"unknown postprocessor {name!r}; known: {known}")
    return cls()


def default_postprocs(kind: TargetKind | str) -> list[Postproc]:
    """The checks every candidate of a target kind passes before it is measured."""
    if TargetKind(kind).is_gpu:
        return [VerifyGpuLimits()]
    return [VerifyCodegen()]


def first_rejection(sch: Schedule, ctx: SpaceContext, procs: list[Postproc]) -> str | None:
    """The first reason any postprocessor rejects `sch`, or None."""
    for proc in procs:
        reason = proc.check(sch, ctx)
        if reason is not None:
            return reason
    return None
