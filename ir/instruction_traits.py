"""Trace traits of schedule primitives: what a recorded instruction returns and replays with.

Each primitive declares its traits where it is defined (`@primitive(...)` in the `prim_*`
modules); `Trace` reads them here to render Python (`a, b, = sch.split(...)` for a list of
handles) and to hand a sampling instruction its decision on replay. Importing `tunefleet.ir`
imports `schedule`, which imports every family module, so the registry is complete before any
trace is rendered or replayed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from .errors import ScheduleError

Results = Literal["none", "one", "list"]
F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class InstructionTraits:
    """How a primitive appears in a trace.

    `results`: it returns no handle, one handle, or a list of handles. `decision`: for a
    sampling primitive, what its decision is (its trace keeps the decision apart, mutators
    change it, and replay passes it back as the `decision` keyword); "" otherwise. A
    sampling primitive's function returns (its result, the decision it took).
    """

    name: str
    results: Results
    decision: str = ""

    @property
    def sampling(self) -> bool:
        """Whether the instruction samples (has a decision)."""
        return bool(self.decision)


_TRAITS: dict[str, InstructionTraits] = {}


def primitive(results: Results = "none", decision: str = "") -> Callable[[F], F]:
    """Declare the decorated function a schedule primitive, recorded under its own name."""

    def register(fn: F) -> F:
        name = fn.__name__
        if name in _TRAITS:
            raise ValueError(f"schedule primitive {name!r} is declared twice")
        _TRAITS[name] = InstructionTraits(name, results, decision)
        return fn

    return register


def traits_of(kind: str) -> InstructionTraits:
    """The traits of the primitive `kind`; ScheduleError when no primitive has that name."""
    try:
        return _TRAITS[kind]
    except KeyError:
        raise ScheduleError(f"unknown primitive {kind!r}") from None


def is_primitive(kind: str) -> bool:
    """Whether a primitive called `kind` is declared."""
    return kind in _TRAITS


def declared() -> Mapping[str, InstructionTraits]:
    """Every declared primitive's traits by name (a read-only view)."""
    return dict(_TRAITS)


def sampling_kinds() -> tuple[str, ...]:
    """The names of the sampling primitives, sorted."""
    return tuple(sorted(k for k, t in _TRAITS.items() if t.sampling))
