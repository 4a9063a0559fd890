"""Symbolic dimensions of the model graph: a constant times a product of named dims.

Every shape in a decoder-only LLM is such a monomial (`b*n` tokens, `b*32` score rows, `4096`),
so the graph stays exact without a general expression system; `ir` gets the same values as
`ir.Var` expressions when PrimFuncs are built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Dim:
    """`coeff * prod(vars)`; `vars` is sorted so that equal dims compare equal."""

    coeff: int = 1
    vars: tuple[str, ...] = ()

    @staticmethod
    def of(value: int | str | Dim) -> Dim:
        """A dim from an int constant, a symbol name, or a dim."""
        if isinstance(value, Dim):
            return value
        if isinstance(value, str):
            return Dim(1, (value,))
        return Dim(int(value), ())

    def __mul__(self, other: int | str | Dim) -> Dim:
        o = Dim.of(other)
        return Dim(self.coeff * o.coeff, tuple(sorted(self.vars + o.vars)))

    __rmul__ = __mul__

    @property
    def is_static(self) -> bool:
        """True when the dim has no symbols."""
        return not self.vars

    def evaluate(self, dims: Mapping[str, int]) -> int:
        """The dim's value with each symbol taken from `dims` (KeyError names a missing one)."""
        value = self.coeff
        for v in self.vars:
            value *= dims[v]
        return value

    def substitute(self, dims: Mapping[str, int]) -> Dim:
        """Replace the symbols named in `dims` with their values; others stay symbolic."""
        coeff = self.coeff
        rest: list[str] = []
        for v in self.vars:
            if v in dims:
                coeff *= dims[v]
            else:
                rest.append(v)
        return Dim(coeff, tuple(rest))

    def __str__(self) -> str:
        if not self.vars:
            return str(self.coeff)
        body = "*".join(self.vars)
        return body if self.coeff == 1 else f"{self.coeff}*{body}"


def symbols_of(dims: Mapping[str, Dim] | tuple[Dim, ...]) -> tuple[str, ...]:
    """The sorted symbol names used by a shape."""
    values = dims.values() if isinstance(dims, Mapping) else dims
    return tuple(sorted({v for d in values for v in d.vars}))
