"""Layout maps: split one dimension of a buffer by a factor, then permute the dimensions.

This is the index map of `Schedule.transform_layout`. Splitting dim `axis` of a buffer by
`factor` turns index `i` into the pair `(i // factor, i % factor)` at positions `axis` and
`axis + 1`; `order` then lists the dims of the split buffer in their new order. Packing the
weight of a dense layer for a GEMM micro-kernel is

    LayoutMap(axis=0, factor=16, order=(0, 2, 1)):  w[j, k] -> wp[j // 16, k, j % 16]

so that 16 consecutive output columns j sit next to each other for every k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ScheduleError
from .expr import Buffer, Const, Expr, binop, const
from .simplify import simplify


@dataclass(frozen=True)
class LayoutMap:
    """Split dim `axis` by `factor` (None: no split), then reorder dims as `order`."""

    axis: int | None
    factor: int | None
    order: tuple[int, ...]

    def check(self, buf: Buffer) -> None:
        """Raise a one-line ScheduleError if the map does not fit `buf`'s shape."""
        ndim = len(buf.shape)
        if (self.axis is None) != (self.factor is None):
            raise ScheduleError("transform_layout needs both axis and factor, or neither")
        if self.axis is not None and self.factor is not None:
            for what, v in (("axis", self.axis), ("factor", self.factor)):
                if not isinstance(v, int) or isinstance(v, bool):
                    raise ScheduleError(f"transform_layout {what} must be an int, got {v!r}")
            if not 0 <= self.axis < ndim:
                raise ScheduleError(f"{buf.name} has {ndim} dims; axis {self.axis} is out of range")
            if self.factor <= 0:
                raise ScheduleError(f"split factor must be positive, got {self.factor}")
            rem = simplify(binop("floormod", buf.shape[self.axis], const(self.factor)))
            if not (isinstance(rem, Const) and rem.value == 0):
                raise ScheduleError(
                    f"factor {self.factor} does not divide dim {self.axis} "
                    f"({buf.shape[self.axis]}) of {buf.name}; pick a divisor"
                )
            ndim += 1
        if sorted(self.order) != list(range(ndim)):
            raise ScheduleError(
                f"order {list(self.order)} is not a permutation of the {ndim} dims "
                f"0..{ndim - 1} of {buf.name}" + (" after the split" if self.factor else "")
            )

    def _split(self, items: Sequence[Expr], outer: Expr, inner: Expr) -> list[Expr]:
        assert self.axis is not None
        return [*items[: self.axis], outer, inner, *items[self.axis + 1 :]]

    def shape(self, shape: Sequence[Expr]) -> tuple[Expr, ...]:
        """The shape of the transformed buffer."""
        dims = list(shape)
        if self.axis is not None and self.factor is not None:
            outer = simplify(binop("floordiv", shape[self.axis], const(self.factor)))
            dims = self._split(dims, outer, const(self.factor))
        return tuple(dims[d] for d in self.order)

    def indices(self, indices: Sequence[Expr]) -> tuple[Expr, ...]:
        """Where element `indices` of the old buffer lives in the transformed one."""
        idx = list(indices)
        if self.axis is not None and self.factor is not None:
            i, f = indices[self.axis], const(self.factor, indices[self.axis].dtype)
            idx = self._split(
                idx, simplify(binop("floordiv", i, f)), simplify(binop("floormod", i, f))
            )
        return tuple(idx[d] for d in self.order)


__all__ = ["LayoutMap"]
