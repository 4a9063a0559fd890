"""Traces: the recorded program of schedule primitives, with sampled decisions kept apart.

An instruction is a primitive call: its kind (the Schedule method), positional inputs (random
variables, literals or lists of them), keyword attributes and the random variables it
produced. Sampling instructions have a decision (the choice made) stored in `decisions`,
indexed by instruction position, so mutators change decisions without touching instructions.
Replaying calls the same methods on a fresh Schedule; JSON and Python renderings come from the
same data. What each kind returns and whether it samples are the primitive's declared traits
(`instruction_traits`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ScheduleError
from .instruction_traits import is_primitive, traits_of

if TYPE_CHECKING:
    from .schedule import Schedule
    from .stmt import PrimFunc


@dataclass(frozen=True)
class RV:
    """A random variable: a handle to a block ("b"), a loop ("l") or an integer ("v")."""

    kind: str
    id: int

    @property
    def name(self) -> str:
        """The handle's name in traces (`b3`, `l4`, `v5`)."""
        return f"{self.kind}{self.id}"

    def __repr__(self) -> str:
        return self.name


def BlockRV(i: int) -> RV:
    """A block handle with id `i`."""
    return RV("b", i)


def LoopRV(i: int) -> RV:
    """A loop handle with id `i`."""
    return RV("l", i)


def ExprRV(i: int) -> RV:
    """An integer handle with id `i`."""
    return RV("v", i)


@dataclass(frozen=True)
class Instruction:
    """One recorded primitive call."""

    kind: str
    inputs: tuple[Any, ...]
    attrs: tuple[tuple[str, Any], ...]
    outputs: tuple[RV, ...]


def _enc(v: Any) -> Any:
    if isinstance(v, RV):
        return {"rv": v.name}
    if isinstance(v, list | tuple):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict) and "rv" in v:
        name = v["rv"]
        return RV(name[0], int(name[1:]))
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def _py(v: Any) -> str:
    if isinstance(v, RV):
        return v.name
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_py(x) for x in v) + "]"
    return repr(v)


@dataclass(frozen=True)
class Trace:
    """An immutable sequence of instructions plus decisions for the sampling ones."""

    insts: tuple[Instruction, ...] = ()
    decisions: Mapping[int, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.insts)

    def with_decision(self, index: int, decision: Any) -> Trace:
        """A copy with one decision changed (a mutation)."""
        if not (0 <= index < len(self.insts)) or not _samples(self.insts[index].kind):
            raise ScheduleError(f"instruction #{index} is not a sampling instruction")
        d = dict(self.decisions)
        d[index] = decision
        return Trace(self.insts, d)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form."""
        return {
            "insts": [
                {
                    "kind": i.kind,
                    "inputs": _enc(i.inputs),
                    "attrs": _enc(i.attrs),
                    "outputs": _enc(i.outputs),
                }
                for i in self.insts
            ],
            "decisions": [[k, _enc(v)] for k, v in sorted(self.decisions.items())],
        }

    def to_json(self) -> str:
        """JSON text; `Trace.from_json` reads it back."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def from_json(text: str | Mapping[str, Any]) -> Trace:
        """Parse a trace from JSON text (or its dict form)."""
        data = json.loads(text) if isinstance(text, str) else text
        insts = tuple(
            Instruction(
                d["kind"],
                tuple(_dec(x) for x in d["inputs"]),
                tuple((k, _dec(v)) for k, v in d["attrs"]),
                tuple(_dec(x) for x in d["outputs"]),
            )
            for d in data["insts"]
        )
        decisions = {int(k): _dec(v) for k, v in data["decisions"]}
        return Trace(insts, decisions)

    def as_python(self, func_name: str = "apply_schedule") -> str:
        """The trace as a Python function over a Schedule `sch`."""
        lines = [f"def {func_name}(sch):"]
        for idx, inst in enumerate(self.insts):
            args = [_py(x) for x in inst.inputs] + [f"{k}={_py(v)}" for k, v in inst.attrs]
            if idx in self.decisions:
                args.append(f"decision={_py(self.decisions[idx])}")
            call = f"sch.{inst.kind}({', '.join(args)})"
            if not inst.outputs:
                lines.append(f"    {call}")
            elif is_primitive(inst.kind) and traits_of(inst.kind).results == "list":
                lines.append(f"    {', '.join(o.name for o in inst.outputs)}, = {call}")
            else:
                lines.append(f"    {inst.outputs[0].name} = {call}")
        if len(lines) == 1:
            lines.append("    pass")
        return "\n".join(lines)

    def apply(
        self,
        func: PrimFunc,
        decisions: Mapping[int, Any] | None = None,
        *,
        seed: int | None = None,
        redraw: bool = False,
    ) -> Schedule:
        """Replay on `func` (with some decisions replaced) and return the resulting Schedule.

        With `redraw`, sampling steps not named in `decisions` draw anew from `seed` instead of
        taking the trace's own decisions: a fresh, reproducible point of the same design space.
        """
        from .schedule import Schedule

        merged = {} if redraw else dict(self.decisions)
        if decisions:
            merged.update(decisions)
        sch = Schedule(func, seed=seed)
        env: dict[RV, RV] = {}

        def resolve(v: Any) -> Any:
            if isinstance(v, RV):
                try:
                    return env[v]
                except KeyError:
                    raise ScheduleError(f"trace uses {v.name} before defining it") from None
            if isinstance(v, list | tuple):
                return [resolve(x) for x in v]
            return v

        for idx, inst in enumerate(self.insts):
            method = getattr(sch, inst.kind, None)
            if method is None or not is_primitive(inst.kind):
                raise ScheduleError(f"instruction #{idx}: unknown primitive {inst.kind!r}")
            kwargs = {k: resolve(v) for k, v in inst.attrs}
            if traits_of(inst.kind).sampling and idx in merged:
                kwargs["decision"] = merged[idx]
            try:
                out = method(*[resolve(x) for x in inst.inputs], **kwargs)
            except ScheduleError as err:
                raise ScheduleError(f"replaying instruction #{idx} ({inst.kind}): {err}") from None
            outs = list(out) if isinstance(out, list | tuple) else ([] if out is None else [out])
            if len(outs) != len(inst.outputs):
                raise ScheduleError(
                    f"replaying instruction #{idx} ({inst.kind}) gave {len(outs)} "
                    f"results, trace has {len(inst.outputs)}"
                )
            for old, new in zip(inst.outputs, outs, strict=True):
                env[old] = new
        return sch


def _samples(kind: str) -> bool:
    return is_primitive(kind) and traits_of(kind).sampling


def trace_hash(trace: Trace) -> str:
    """Stable hex SHA-256 of a trace's instructions and decisions."""
    return hashlib.sha256(trace.to_json().encode()).hexdigest()
