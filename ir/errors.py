"""Error classes of the IR package."""

from __future__ import annotations


class IRError(Exception):
    """Base of errors raised while scheduling, lowering or generating code."""


class ScheduleError(IRError):
    """An illegal schedule primitive: says what was asked and why it cannot be done."""


class LoweringError(IRError):
    """A program that cannot be lowered to loops."""


class CodegenError(IRError):
    """A program the target's code generator cannot express (e.g. GPU threads on the CPU)."""
