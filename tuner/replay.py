"""Replaying a trace with a seeded random source, so that fresh decisions are reproducible.

`Trace.apply` always replays with the trace's own decisions on an unseeded Schedule; the tuner
needs to draw new decisions for a design-space trace deterministically from a seed, and to
replay mutated decisions, so it replays the instructions itself on `Schedule(func, seed)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import RV, SAMPLING_KINDS, Trace


def replay(
    func: PrimFunc,
    trace: Trace,
    seed: int | None = None,
    decisions: Mapping[int, Any] | None = None,
) -> Schedule:
    """Replay `trace` on `func`; sampling steps use `decisions` where given, else draw anew.

    Raises ScheduleError when an instruction (or a given decision) is invalid.
    """
    sch = Schedule(func, seed=seed)
    given = dict(decisions or {})
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

    for idx, inst in enumerate(trace.insts):
        method = getattr(sch, inst.kind, None)
        if method is None or inst.kind.startswith("_"):
            raise ScheduleError(f"instruction #{idx}: unknown primitive {inst.kind!r}")
        kwargs = {k: resolve(v) for k, v in inst.attrs}
        if inst.kind in SAMPLING_KINDS and idx in given:
            kwargs["decision"] = given[idx]
        try:
            out = method(*[resolve(x) for x in inst.inputs], **kwargs)
        except ScheduleError as err:
            raise ScheduleError(f"replaying instruction #{idx} ({inst.kind}): {err}") from None
        outs = list(out) if isinstance(out, list | tuple) else ([] if out is None else [out])
        if len(outs) != len(inst.outputs):
            raise ScheduleError(f"instruction #{idx} ({inst.kind}) changed its number of results")
        for old, new in zip(inst.outputs, outs, strict=True):
            env[old] = new
    return sch


STRUCTURAL_KINDS = ("sample_compute_location",)


def resample(func: PrimFunc, trace: Trace, seed: int) -> Schedule:
    """A fresh point of the design space `trace` describes, drawn from `seed`.

    Tile sizes and categorical choices are drawn anew; compute locations are kept, because
    the instructions recorded after them depend on where the block went (they change only by
    mutation, and replay rejects the mutants that no longer fit).
    """
    kept = {i: d for i, d in trace.decisions.items() if trace.insts[i].kind in STRUCTURAL_KINDS}
    return replay(func, Trace(trace.insts, {}), seed=seed, decisions=kept)
