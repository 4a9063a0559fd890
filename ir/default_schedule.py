"""A reasonable untuned schedule for any PrimFunc on a target (the baseline that tuning beats)."""

from __future__ import annotations

from typing import Any

from .default_key_tiles import form_blocks, key_tiled
from .errors import ScheduleError
from .expr import BufferLoad, Const, Var
from .schedule import Schedule
from .schedule_tree import blocks, reduce_loop_vars
from .stmt import BlockRealize, BufferStore, PrimFunc
from .visit import uses_var, walk


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


def default_schedule(op_or_func: Any, target: str = "cpu", arch: str = "") -> Schedule:
    """CPU: move a unit-stride spatial loop inside the reduction (matmul's i, k, j), fuse the
    two outer spatial loops and run them in parallel, hoist each reduction's init out of its
    reduce loops, and vectorize the innermost loop when it is spatial with a constant extent or a
    contiguous reduction (rendered as a simd reduction). CUDA: see `default_schedule_cuda`
    (threads over outputs, cross-thread row reductions); `arch` ("sm_90") enables the
    forms that need it (thread-block clusters from sm_90)."""
    func = _as_func(op_or_func)
    if target == "cuda":
        from .default_schedule_cuda import default_cuda_schedule

        return default_cuda_schedule(func, arch=arch)
    if target not in ("cpu", "c"):
        raise ScheduleError(
            f"no default schedule for target {target!r} in this build (available: cpu, cuda)"
        )
    sch = Schedule(func)
    if key_tiled(func):  # a prompt's attention: its values' column of ones read where summed
        sch.compute_inline(sch.get_block(form_blocks(func)["values"].block.name))
    for br, _ in blocks(sch.mod):
        block = sch.get_block(br.block.name)
        loops = sch.get_loops(block)
        red = reduce_loop_vars(br)
        spatial = [lp for lp in loops if sch.get(lp).var not in red]
        reduce_loops = [lp for lp in loops if sch.get(lp).var in red]
        if reduce_loops and len(spatial) >= 2 and _unit_stride(br, sch.get(spatial[-1]).var):
            # e.g. matmul: i, k, j keeps B and C rows contiguous and j free to vectorize
            sch.reorder(*spatial[:-1], *reduce_loops, spatial[-1])
            loops = sch.get_loops(block)
        outer = []
        for lp in loops:
            if sch.get(lp).var in red:
                break
            outer.append(lp)
        if len(outer) >= 2 and len(loops) > 2:
            sch.fuse(outer[0], outer[1])
            loops = sch.get_loops(block)
            outer = outer[1:]
        if outer:
            sch.parallel(loops[0])
        if br.block.init is not None and reduce_loops:
            first_reduce = next(lp for lp in loops if sch.get(lp).var in red)
            sch.decompose_reduction(block, first_reduce)
        inner = sch.get(loops[-1])
        if (
            len(loops) > 1
            and inner.var not in red
            and isinstance(inner.extent, Const)
            and loops[-1] != loops[0]
        ):
            sch.vectorize(loops[-1])
        elif inner.var in red and len(reduce_loops) == 1 and _unit_stride(br, inner.var):
            sch.vectorize(loops[-1])  # a contiguous dot product: an OpenMP simd reduction
    return sch


def _unit_stride(br: BlockRealize, loop_var: Var) -> bool:
    """True when the loop drives an iter var that every access uses only as its last index."""
    ivs = [
        iv.var for iv, v in zip(br.block.iter_vars, br.iter_values, strict=True) if v == loop_var
    ]
    if not ivs:
        return False
    iv = ivs[0]
    for n in walk(br.block.body):
        if isinstance(n, BufferLoad | BufferStore) and any(uses_var(i, iv) for i in n.indices):
            if n.indices[-1] != iv or any(uses_var(i, iv) for i in n.indices[:-1]):
                return False
    return True
