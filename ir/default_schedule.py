"""A reasonable untuned schedule for any PrimFunc on a target (the baseline that tuning beats)."""

from __future__ import annotations

from typing import Any

from .errors import ScheduleError
from .expr import Const
from .schedule import Schedule
from .schedule_tree import blocks, reduce_loop_vars
from .stmt import PrimFunc


def _as_func(op_or_func: Any) -> PrimFunc:
    if isinstance(op_or_func, PrimFunc):
        return op_or_func
    if isinstance(op_or_func, Schedule):
        return op_or_func.func
    if isinstance(op_or_func, str):
        from .ops import get_op

        op_or_func = get_op(op_or_func)
    build = getattr(op_or_func, "build", None)
    if build is not None:
        return build(op_or_func.example)
    raise TypeError(
        "default_schedule needs a PrimFunc, an OpDef or an op name, got "
        f"{type(op_or_func).__name__}"
    )


def default_schedule(op_or_func: Any, target: str = "cpu") -> Schedule:
    """CPU: fuse the two outer spatial loops of each nest and run them in parallel, hoist each
    reduction's init out of its reduce loops, and vectorize an innermost spatial loop of
    constant extent. CUDA schedules arrive with the GPU code generator."""
    func = _as_func(op_or_func)
    if target not in ("cpu", "c"):
        raise ScheduleError(
            f"no default schedule for target {target!r} in this build (available: cpu)"
        )
    sch = Schedule(func)
    for br, _ in blocks(func):
        block = sch.get_block(br.block.name)
        loops = sch.get_loops(block)
        red = reduce_loop_vars(br)
        spatial_outer = []
        for lp in loops:
            if sch.get(lp).var in red:
                break
            spatial_outer.append(lp)
        if len(spatial_outer) >= 2 and len(loops) > 2:
            fused = sch.fuse(spatial_outer[0], spatial_outer[1])
            loops = sch.get_loops(block)
            spatial_outer = [fused, *spatial_outer[2:]]
        if spatial_outer:
            sch.parallel(loops[0])
        if br.block.init is not None and len(loops) > len(spatial_outer):
            sch.decompose_reduction(block, loops[len(spatial_outer)])
        inner = sch.get(loops[-1])
        if (
            len(loops) > 1
            and inner.var not in red
            and isinstance(inner.extent, Const)
            and loops[-1] != loops[0]
        ):
            sch.vectorize(loops[-1])
    return sch
