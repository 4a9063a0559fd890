"""Code generation entry point: PrimFunc or Schedule -> KernelSource with its call description.

Workers compile `source`, load `entry` and call it with the buffers' data pointers in `args`
order followed by the symbolic dims as int64_t scalars (or, for a CUDA kernel built with
`dim_slots`, one pointer to a device array holding them), so nobody re-derives the ABI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import CodegenError
from .expr import Const, Expr, Var
from .gpu_launch import launch_dims
from .render_c import CRenderer, CStyleRenderer, c_name
from .render_cuda import CUDARenderer
from .simplify import simplify
from .stmt import PrimFunc
from .target_passes import lower_for_target


@dataclass(frozen=True)
class KernelArg:
    """One argument of a kernel: a buffer pointer or a symbolic-dim scalar (int64_t)."""

    name: str
    kind: str  # "buffer" | "scalar"
    dtype: str
    shape: tuple[int | Expr, ...] = ()


@dataclass(frozen=True)
class KernelSource:
    """A complete translation unit and how to call its kernel.

    `grid`, `block` and `shared_bytes` describe a CUDA launch: (x, y, z) extents as ints or
    launch expressions over the symbolic dims (`ceildiv`, `//`, `min`, `max`; see
    `gpu_launch`), and the dynamic shared memory bytes to pass at launch (0 when all shared
    arrays are static; above 48 KB the loader must raise the kernel's dynamic-shared
    attribute). They are None for C.
    """

    lang: str
    source: str
    entry: str
    args: tuple[KernelArg, ...]
    grid: tuple[int | str, ...] | None = None
    block: tuple[int | str, ...] | None = None
    shared_bytes: int | str | None = None
    dim_slots: tuple[str, ...] | None = None  # dims read from a device array (see build_source)

    @property
    def buffer_args(self) -> tuple[KernelArg, ...]:
        """The pointer arguments, in call order."""
        return tuple(a for a in self.args if a.kind == "buffer")

    @property
    def scalar_args(self) -> tuple[KernelArg, ...]:
        """The symbolic-dim arguments (int64_t), in call order."""
        return tuple(a for a in self.args if a.kind == "scalar")

    @property
    def launch_comment(self) -> str | None:
        """`// launch: grid=(...) block=(...) dynamic_shared_bytes=...` for printing beside
        a CUDA source (None for C)."""
        if self.grid is None or self.block is None:
            return None
        grid = ", ".join(str(g) for g in self.grid)
        block = ", ".join(str(b) for b in self.block)
        return f"// launch: grid=({grid}) block=({block}) dynamic_shared_bytes={self.shared_bytes}"


RENDERERS: dict[str, type[CStyleRenderer]] = {
    "cpu": CRenderer,
    "c": CRenderer,
    "cuda": CUDARenderer,
}


def _dim(e: Expr) -> int | Expr:
    s = simplify(e)
    return int(s.value) if isinstance(s, Const) else s


def build_source(
    func_or_schedule: Any, target: str = "cpu", dim_slots: tuple[str, ...] | None = None
) -> KernelSource:
    """Lower and render a PrimFunc (or a Schedule's current one) for `target`.

    `dim_slots` (CUDA only): the kernel reads its symbolic dims from a device array of these
    dims, passed as one pointer after the buffers, instead of taking them as scalars (what a
    CUDA graph replayed at changing sizes needs); `KernelSource.dim_slots` says so."""
    func = getattr(func_or_schedule, "func", func_or_schedule)
    if not isinstance(func, PrimFunc):
        raise TypeError(
            f"build_source needs a PrimFunc or a Schedule, got {type(func_or_schedule).__name__}"
        )
    renderer_cls = RENDERERS.get(target)
    if renderer_cls is None:
        known = ", ".join(sorted(RENDERERS))
        raise CodegenError(
            f"no code generator for target {target!r} in this build (available: {known})"
        )
    lowered = lower_for_target(func, renderer_cls.lang)
    scalars: tuple[Var, ...] = func.shape_vars
    entry = f"{c_name(func.name)}_kernel"
    if dim_slots is not None and renderer_cls is not CUDARenderer:
        raise CodegenError(f"dims read from memory need the cuda target, not {target!r}")
    renderer = CUDARenderer(dim_slots) if dim_slots is not None else renderer_cls()
    source = renderer.render(lowered, entry, scalars)
    args = tuple(
        KernelArg(b.name, "buffer", b.dtype, tuple(_dim(d) for d in b.shape)) for b in func.params
    ) + tuple(KernelArg(v.name, "scalar", "int64") for v in scalars)
    if isinstance(renderer, CUDARenderer):
        dims = launch_dims(lowered)
        return KernelSource(
            renderer.lang,
            source,
            entry,
            args,
            dims.grid,
            dims.block,
            renderer.dynamic_shared_bytes,
            dim_slots,
        )
    return KernelSource(renderer_cls.lang, source, entry, args)
