"""Arithmetic simplification of index expressions and integer bounds analysis.

Integer sums are put in a canonical linear form (terms with integer coefficients plus a
constant), so the indices that split and fuse produce (`(i0*8 + i1) // 8`, `f % n`) fold back
to plain variables when the bounds of the parts allow it. Float expressions only get constant
folding, never reassociation, so numerics do not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .dtypes import is_float, is_int
from .expr import BinOp, Call, Cast, Const, Expr, Select, Var, const
from .visit import rewrite

Bounds = tuple[int | None, int | None]  # inclusive; None = unbounded
Ranges = Mapping[Var, tuple[int, int]]  # var -> (lo, hi) inclusive


def bounds(e: Expr, ranges: Ranges | None = None) -> Bounds:
    """Inclusive integer bounds of `e`; variables without a range are taken as >= 0."""
    ranges = ranges or {}
    if isinstance(e, Const):
        v = e.value
        return (int(v), int(v)) if not isinstance(v, float) else (None, None)
    if isinstance(e, Var):
        return ranges.get(e, (0, None))
    if isinstance(e, Cast) and is_int(e.dtype):
        return bounds(e.value, ranges)
    if isinstance(e, Select):
        (a, b), (c, d) = bounds(e.true_value, ranges), bounds(e.false_value, ranges)
        picks = _min_max(e)
        if picks == "min":  # select(x < y, x, y): at most the lesser upper bound
            return (_min(a, c), _min2(b, d))
        if picks == "max":
            return (_max2(a, c), _max(b, d))
        return (_min(a, c), _max(b, d))
    if not isinstance(e, BinOp) or not is_int(e.dtype):
        return (None, None)
    (alo, ahi), (blo, bhi) = bounds(e.a, ranges), bounds(e.b, ranges)
    op = e.op
    if op == "add":
        return (_add(alo, blo), _add(ahi, bhi))
    if op == "sub":
        return (_add(alo, _neg(bhi)), _add(ahi, _neg(blo)))
    if op == "mul":
        if None in (alo, ahi, blo, bhi):
            if alo is not None and blo is not None and alo >= 0 and blo >= 0:
                return (alo * blo, None)
            return (None, None)
        prods = [alo * blo, alo * bhi, ahi * blo, ahi * bhi]  # type: ignore[operator]
        return (min(prods), max(prods))
    if op in ("floordiv", "floormod") and blo is not None and blo == bhi and blo > 0:
        c = blo
        if op == "floordiv":
            return (None if alo is None else alo // c, None if ahi is None else ahi // c)
        if alo is not None and ahi is not None and alo // c == ahi // c:
            return (alo % c, ahi % c)
        return (0, c - 1)
    if op == "floormod" and blo is not None and blo >= 0:  # a divisor of 0 has no result
        return (0, None if bhi is None else bhi - 1)
    if op == "floordiv" and blo is not None and blo > 0 and alo is not None and alo >= 0:
        return (0, ahi)
    if op == "min":
        return (_min(alo, blo), _min2(ahi, bhi))
    if op == "max":
        return (_max2(alo, blo), _max(ahi, bhi))
    if op == "bitand" and alo is not None and alo >= 0 and blo is not None and blo >= 0:
        return (0, _min2(ahi, bhi))
    return (None, None)


def _min_max(e: Select) -> str | None:
    """"min" for `select(x < y, x, y)` (or `<=`, or `y > x`), "max" for the arms swapped."""
    cond = e.cond
    if not isinstance(cond, BinOp) or cond.op not in ("lt", "le", "gt", "ge"):
        return None
    small, big = (cond.a, cond.b) if cond.op in ("lt", "le") else (cond.b, cond.a)
    if (e.true_value, e.false_value) == (small, big):
        return "min"
    if (e.true_value, e.false_value) == (big, small):
        return "max"
    return None


def _add(a: int | None, b: int | None) -> int | None:
    return None if a is None or b is None else a + b


def _neg(a: int | None) -> int | None:
    return None if a is None else -a


def _min(a: int | None, b: int | None) -> int | None:  # lower bound of a union
    return None if a is None or b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:  # upper bound of a union
    return None if a is None or b is None else max(a, b)


def _min2(a: int | None, b: int | None) -> int | None:  # upper bound of min(a, b)
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _max2(a: int | None, b: int | None) -> int | None:  # lower bound of max(a, b)
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# ---------------------------------------------------------------- linear forms


def _term_key(e: Expr) -> str:
    return repr(e)


def linear(e: Expr) -> tuple[dict[Expr, int], int]:
    """Split an integer expression into {term: coefficient} plus a constant."""
    if isinstance(e, Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return {}, e.value
    if isinstance(e, BinOp) and is_int(e.dtype):
        if e.op in ("add", "sub"):
            ta, ca = linear(e.a)
            tb, cb = linear(e.b)
            sign = 1 if e.op == "add" else -1
            out = dict(ta)
            for t, c in tb.items():
                out[t] = out.get(t, 0) + sign * c
            return {t: c for t, c in out.items() if c != 0}, ca + sign * cb
        if e.op == "mul":
            ta, ca = linear(e.a)
            tb, cb = linear(e.b)
            if not tb:
                return {t: c * cb for t, c in ta.items() if c * cb != 0}, ca * cb
            if not ta:
                return {t: c * ca for t, c in tb.items() if c * ca != 0}, ca * cb
    return {e: 1}, 0


def from_linear(terms: Mapping[Expr, int], c: int, dtype: str = "int64") -> Expr:
    """Rebuild a canonical expression from a linear form (terms sorted, constant last)."""
    out: Expr | None = None
    for t in sorted(terms, key=_term_key):
        coef = terms[t]
        if coef == 0:
            continue
        if coef == 1:
            piece, neg = t, False
        elif coef == -1:
            piece, neg = t, True
        elif coef > 0:
            piece, neg = BinOp("mul", t, const(coef, dtype)), False
        else:
            piece, neg = BinOp("mul", t, const(-coef, dtype)), True
        if out is None:
            out = BinOp("sub", const(0, dtype), piece) if neg else piece
        else:
            out = BinOp("sub" if neg else "add", out, piece)
    if out is None:
        return const(c, dtype)
    if c > 0:
        out = BinOp("add", out, const(c, dtype))
    elif c < 0:
        out = BinOp("sub", out, const(-c, dtype))
    return out


# ---------------------------------------------------------------- simplifier


def simplify(e: Expr, ranges: Ranges | None = None) -> Expr:
    """Fold constants and canonicalise integer arithmetic using variable ranges."""
    ranges = ranges or {}
    return rewrite(e, lambda n: _simplify_node(n, ranges) if isinstance(n, Expr) else None)


def _fold(
    op: str, a: int | float | bool, b: int | float | bool, dtype: str
) -> int | float | bool | None:
    try:
        if op == "add":
            return a + b
        if op == "sub":
            return a - b
        if op == "mul":
            return a * b
        if op == "div":
            return a / b
        if op == "floordiv":
            return a // b if b != 0 else None
        if op == "floormod":
            return a % b if b != 0 else None
        if op == "min":
            return min(a, b)
        if op == "max":
            return max(a, b)
        if op == "lt":
            return a < b
        if op == "le":
            return a <= b
        if op == "gt":
            return a > b
        if op == "ge":
            return a >= b
        if op == "eq":
            return a == b
        if op == "ne":
            return a != b
        if op == "and":
            return bool(a) and bool(b)
        if op == "or":
            return bool(a) or bool(b)
        if op == "shr":
            return a >> b
        if op == "shl":
            return a << b
        if op == "bitand":
            return a & b
        if op == "bitor":
            return a | b
    except (ZeroDivisionError, TypeError, OverflowError):
        return None
    return None


def _simplify_node(e: Expr, ranges: Ranges) -> Expr | None:
    if isinstance(e, Select) and isinstance(e.cond, Const):
        return e.true_value if e.cond.value else e.false_value
    if isinstance(e, Cast) and isinstance(e.value, Const):
        v = e.value.value
        if is_float(e.dtype):
            return const(float(v), e.dtype) if e.dtype == "float32" else None
        if is_int(e.dtype) and not isinstance(v, float):
            return const(int(v), e.dtype)
        return None
    if isinstance(e, Call):
        return None
    if not isinstance(e, BinOp):
        return None
    a, b, op = e.a, e.b, e.op
    if isinstance(a, Const) and isinstance(b, Const):
        if is_float(e.dtype) and e.dtype != "float32":
            return None  # leave narrow-float folding to the target's rounding
        v = _fold(op, a.value, b.value, e.dtype)
        if v is not None and not (isinstance(v, float) and is_int(e.dtype)):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return const(v, e.dtype)
        return None
    if op == "and":
        if isinstance(a, Const):
            return b if a.value else a
        if isinstance(b, Const):
            return a if b.value else b
        return None
    if op == "or":
        if isinstance(a, Const):
            return a if a.value else b
        if isinstance(b, Const):
            return b if b.value else a
        return None
    if is_float(e.dtype):
        if op == "mul" and (_is(b, 1) or _is(a, 1)):
            return a if _is(b, 1) else b
        if op in ("add", "sub") and _is(b, 0):
            return a
        if op == "add" and _is(a, 0):
            return b
        if op == "div" and _is(b, 1):
            return a
        return None
    if op in ("add", "sub", "mul") and is_int(e.dtype):
        terms, c = _merge_divmod(*linear(e))
        return from_linear(terms, c, e.dtype)
    if op in ("floordiv", "floormod") and is_int(e.dtype):
        return _simplify_div(e, ranges)
    if op in ("min", "max") and is_int(e.dtype):
        (alo, ahi), (blo, bhi) = bounds(a, ranges), bounds(b, ranges)
        if op == "min":
            if ahi is not None and blo is not None and ahi <= blo:
                return a
            if bhi is not None and alo is not None and bhi <= alo:
                return b
        else:
            if alo is not None and bhi is not None and alo >= bhi:
                return a
            if blo is not None and ahi is not None and blo >= ahi:
                return b
        if a == b:
            return a
        return None
    if op in ("lt", "le", "gt", "ge", "eq", "ne") and is_int(a.dtype) and is_int(b.dtype):
        diff = simplify(BinOp("sub", a, b), ranges)
        lo, hi = bounds(diff, ranges)
        verdict = _decide(op, lo, hi)
        if verdict is not None:
            return const(verdict, "bool")
        return None
    return None


def _merge_divmod(terms: dict[Expr, int], c: int) -> tuple[dict[Expr, int], int]:
    """Fold (x // k) * k*a + (x % k) * a into x * a (fuse followed by flattening makes it)."""
    terms = dict(terms)
    changed = True
    while changed:
        changed = False
        for t, coef in list(terms.items()):
            if not (isinstance(t, BinOp) and t.op == "floormod"):
                continue
            q = BinOp("floordiv", t.a, t.b)
            if isinstance(t.b, Const):
                partner, want = q, coef * t.b.value
            else:  # symbolic divisor: (x // n) * n appears as one product term
                partner = next(
                    (p for p in (BinOp("mul", q, t.b), BinOp("mul", t.b, q)) if p in terms),
                    None,
                )
                want = coef
            if partner is not None and terms.get(partner) == want:
                del terms[t], terms[partner]
                inner, k = linear(t.a)
                for it, ic in inner.items():
                    terms[it] = terms.get(it, 0) + ic * coef
                c += k * coef
                changed = True
                break
    return {t: v for t, v in terms.items() if v != 0}, c


def _is(e: Expr, v: float) -> bool:
    return isinstance(e, Const) and e.value == v


def _decide(op: str, lo: int | None, hi: int | None) -> bool | None:
    """Decide `diff op 0` from the bounds of diff, or None."""
    if op == "lt":
        if hi is not None and hi < 0:
            return True
        if lo is not None and lo >= 0:
            return False
    elif op == "le":
        if hi is not None and hi <= 0:
            return True
        if lo is not None and lo > 0:
            return False
    elif op == "gt":
        if lo is not None and lo > 0:
            return True
        if hi is not None and hi <= 0:
            return False
    elif op == "ge":
        if lo is not None and lo >= 0:
            return True
        if hi is not None and hi < 0:
            return False
    elif op == "eq":
        if lo == hi == 0:
            return True
        if (lo is not None and lo > 0) or (hi is not None and hi < 0):
            return False
    elif op == "ne":
        if lo == hi == 0:
            return False
        if (lo is not None and lo > 0) or (hi is not None and hi < 0):
            return True
    return None


def _simplify_div(e: BinOp, ranges: Ranges) -> Expr | None:
    a, b = e.a, e.b
    dtype = e.dtype
    if _is(b, 1):
        return a if e.op == "floordiv" else const(0, dtype)
    if isinstance(b, Const) and isinstance(b.value, int) and b.value > 0:
        c = b.value
        terms, k = linear(a)
        quot = {t: v // c for t, v in terms.items() if v % c == 0}
        rest = {t: v for t, v in terms.items() if v % c != 0}
        qk, rk = divmod(k, c)
        # a = c*(quot + qk) + (rest + rk); floor-division splits exactly over that form.
        rest_expr = from_linear(rest, rk, dtype)
        lo, hi = bounds(rest_expr, ranges)
        if lo is not None and hi is not None and lo // c == hi // c:
            if e.op == "floordiv":
                return from_linear(quot, qk + lo // c, dtype)
            return simplify_linear(rest_expr, -c * (lo // c), dtype)
        if not quot and qk == 0:
            # nested floordiv of floordiv with constants: (x // c1) // c2 -> x // (c1*c2)
            if (
                e.op == "floordiv"
                and isinstance(a, BinOp)
                and a.op == "floordiv"
                and isinstance(a.b, Const)
                and a.b.value > 0
            ):
                return _simplify_div(
                    BinOp("floordiv", a.a, const(a.b.value * c, dtype)), ranges
                ) or BinOp("floordiv", a.a, const(a.b.value * c, dtype))
            return None
        if e.op == "floordiv":
            return (
                BinOp("add", from_linear(quot, qk, dtype), BinOp("floordiv", rest_expr, b))
                if quot or qk
                else None
            )
        return BinOp("floormod", rest_expr, b) if rest_expr != a else None
    # symbolic divisor: (x*n + r) // n -> x when 0 <= r < n is known from a range of the same n
    return None


def conjuncts(e: Expr) -> list[Expr]:
    """The terms of a chain of logical ands (`a and b and c` -> [a, b, c]); `True` has none."""
    if isinstance(e, BinOp) and e.op == "and":
        return conjuncts(e.a) + conjuncts(e.b)
    if isinstance(e, Const) and e.value is True:
        return []
    return [e]


def conjunction(conds: Sequence[Expr]) -> Expr:
    """`conds` joined by logical and (`True` for none): the inverse of `conjuncts`."""
    out: Expr = Const(True, "bool")
    for c in conds:
        out = c if isinstance(out, Const) and out.value is True else BinOp("and", out, c)
    return out


def simplify_linear(e: Expr, add: int, dtype: str) -> Expr:
    """An expression plus a constant, in canonical linear form."""
    terms, k = linear(e)
    return from_linear(terms, k + add, dtype)


def prove(cond: Expr, ranges: Ranges | None = None) -> bool:
    """True when `cond` simplifies to the constant true under `ranges`."""
    s = simplify(cond, ranges)
    return isinstance(s, Const) and bool(s.value)


def in_bounds(indices: Sequence[Expr], shape: Sequence[Expr], ranges: Ranges) -> bool:
    """Whether every index lies in [0, its dim) for every value `ranges` allow."""
    return all(
        prove(i >= 0, ranges) and prove(i < d, ranges) for i, d in zip(indices, shape, strict=True)
    )
