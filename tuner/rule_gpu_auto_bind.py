"""GPU auto-bind: anything no GPU rule scheduled gets ir's default CUDA schedule.

Runs after the block rules; a schedule with no thread-bound loop (no rule applied) is replaced
by `default_schedule(func, "cuda")` (elementwise over 256-thread blocks, a thread per output
for matmul-like ops, a block per row for row-wise ops), so every workload has a valid sketch.
"""

from __future__ import annotations

from tunefleet.ir.default_schedule import default_schedule
from tunefleet.ir.schedule import Schedule

from .space import GlobalRule, SpaceContext


class GpuAutoBind(GlobalRule):
    """Replace an unbound schedule by the default CUDA schedule of its function."""

    name = "gpu_auto_bind"

    def apply(self, sch: Schedule, ctx: SpaceContext) -> Schedule:
        if not ctx.is_gpu:
            return sch.copy()
        if any(inst.kind == "bind" for inst in sch.trace.insts):
            return sch.copy()
        return default_schedule(sch.original, target="cuda", arch=ctx.target.arch)
