"""Masked reductions and the loops their masks leave empty (causal attention's upper tiles).

A masked reduction adds `select(cond, x, identity)`: where `cond` is false the step adds
the combiner's identity (0 for sums, -inf for a max), so those steps do nothing. A sum may
also add `select(cond, w, 0) * x`, the select on one factor (a weight, once per row and key,
where a select on the product would cost one per product); the other factor is taken to be
finite.
`trim_masked` shortens a loop to the iterations where some masked reduction beneath it may
still add something, and `exists_over` gives the condition a reduction's outer steps keep
when its inner steps are factored out (rfactor's write-back).

Only linear inequalities are read (`a <= b`, `a < b`, `a >= b`, `a > b` over integers);
other conjuncts are kept whole or left out, which only ever keeps more iterations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .errors import ScheduleError
from .expr import (
    REDUCE_IDENTITY,
    BinOp,
    Buffer,
    BufferLoad,
    Cast,
    Const,
    Expr,
    Select,
    Var,
    binop,
    const,
)
from .instruction_traits import primitive
from .regions import with_regions
from .schedule_state import ScheduleState
from .schedule_tree import (
    block_replacer,
    blocks,
    iter_nodes,
    map_stmt,
    reads_of,
    reduction_update,
    root_body,
    with_root,
    writes_of,
)
from .simplify import bounds, conjunction, conjuncts, from_linear, linear, simplify
from .stmt import TRUE, Block, BlockRealize, BufferStore, For
from .trace import RV
from .visit import substitute, uses_var, walk

_FLIP = {"ge": "le", "gt": "lt"}


def masked_update(block: Block) -> tuple[str, Expr] | None:
    """(op, cond) when `block` is a reduction `C = C op select(cond, x, identity of op)`;
    nested selects with the identity on their false side join `cond`."""
    store = block.body
    if block.init is None or not isinstance(store, BufferStore):
        return None
    found = reduction_update(store)
    if found is None:
        return None
    op, source = found
    cond = _mask_of(source, op)
    return None if cond is None else (op, cond)


def peel_mask(source: Expr, op: str) -> tuple[list[Expr], Expr]:
    """The conditions that must all hold for `source` to differ from the identity of `op`,
    and `source` with the selects that carry them taken out: selects giving the identity
    when false and, in a sum, selects on either factor of a product (a weight selected to 0
    zeroes its product, the other factor taken as finite).
    `select(a, select(b, x, 0), 0)` -> ([a, b], x); `select(a, w, 0) * v` -> ([a], w * v)."""
    if isinstance(source, Select) and _is_identity(source.false_value, op):
        conds, inner = peel_mask(source.true_value, op)
        return [*conjuncts(source.cond), *conds], inner
    if op != "add":
        return [], source
    if isinstance(source, BinOp) and source.op == "mul":
        (ca, a), (cb, b) = peel_mask(source.a, op), peel_mask(source.b, op)
        return ([*ca, *cb], binop("mul", a, b)) if ca or cb else ([], source)
    if isinstance(source, Cast) and not source.dtype.startswith(("int", "uint", "bool")):
        conds, inner = peel_mask(source.value, op)
        return (conds, dataclasses.replace(source, value=inner)) if conds else ([], source)
    return [], source


def _mask_of(source: Expr, op: str) -> Expr | None:
    """A condition without which `source` is the identity of `op`, or None when it has none
    (see `peel_mask`)."""
    conds, _ = peel_mask(source, op)
    return conjunction(conds) if conds else None


def _is_identity(e: Expr, op: str) -> bool:
    if not isinstance(e, Const) or isinstance(e.value, bool):
        return False
    return float(e.value) == REDUCE_IDENTITY[op]


def _at_most_zero(cond: Expr) -> tuple[dict[Expr, int], int] | None:
    """`cond` as the linear form L with cond <=> L <= 0, or None when it is not an integer
    inequality."""
    if not isinstance(cond, BinOp) or cond.op not in ("le", "lt", "ge", "gt"):
        return None
    a, b, op = cond.a, cond.b, cond.op
    if op in _FLIP:
        a, b, op = b, a, _FLIP[op]
    if a.dtype == "bool" or not a.dtype.startswith(("int", "uint")):
        return None
    terms, c = linear(binop("sub", a, b))
    return terms, c + (1 if op == "lt" else 0)


def _uses(e: Expr, names: Mapping[Var, object]) -> bool:
    return any(isinstance(n, Var) and n in names for n in walk(e))


def _least(
    terms: Mapping[Expr, int], free: Mapping[Var, Expr]
) -> tuple[dict[Expr, int], Expr] | None:
    """Split a linear form into its terms without free variables and the least value its
    free terms take (each free variable v over range(free[v])); None when a term mixes
    free and other variables or its bounds are unknown."""
    fixed: dict[Expr, int] = {}
    least: Expr = const(0)
    ints = {v: (0, int(e.value) - 1) for v, e in free.items() if isinstance(e, Const)}
    for t, coef in terms.items():
        if not _uses(t, free):
            fixed[t] = coef
        elif isinstance(t, Var):
            if coef < 0:
                least = binop("add", least, binop("mul", const(coef), free[t] - 1))
        elif {n for n in walk(t) if isinstance(n, Var)} <= set(ints):
            lo, hi = bounds(t, ints)
            pick = lo if coef > 0 else hi
            if pick is None:
                return None
            least = binop("add", least, const(coef * pick))
        else:
            return None
    return fixed, least


def exists_over(cond: Expr, free: Mapping[Var, Expr]) -> Expr:
    """A condition on the other variables that holds whenever some values of the `free`
    variables (each over range(free[v])) make `cond` true: each linear conjunct at the free
    variables' most favourable values, other conjuncts using them dropped (TRUE at worst).

        exists ji < 128: jo * 128 + ji <= i + m - n   ->   jo * 128 <= i + m - n
    """
    kept: list[Expr] = []
    for c in conjuncts(cond):
        if not _uses(c, free):
            kept.append(c)
            continue
        form = _at_most_zero(c)
        split = None if form is None else _least(form[0], free)
        if form is None or split is None:
            continue  # dropped: true for some free values, as far as we can tell
        fixed, least = split
        lhs = simplify(binop("add", from_linear(fixed, form[1]), least))
        kept.append(binop("le", lhs, const(0)))
    return conjunction(kept)


def _upper_bound(cond: Expr, var: Var, free: Mapping[Var, Expr]) -> Expr | None:
    """The largest value of `var` for which `cond` may hold for some free values, or None
    when no linear conjunct bounds `var` from above."""
    best: Expr | None = None
    for c in conjuncts(cond):
        form = _at_most_zero(c)
        if form is None:
            continue
        terms, k = form
        a = terms.get(var, 0)
        if a <= 0:
            continue
        rest = {t: coef for t, coef in terms.items() if t != var}
        if any(uses_var(t, var) for t in rest):
            continue
        split = _least(rest, free)
        if split is None:
            continue
        fixed, least = split
        # a * var + fixed + least <= 0  ->  var <= floor(-(fixed + least) / a)
        neg = binop("sub", const(0), binop("add", from_linear(fixed, k), least))
        top = simplify(binop("floordiv", neg, const(a)))
        best = top if best is None else simplify(binop("min", best, top))
    return best


@primitive()
def trim_masked(state: ScheduleState, loop: RV) -> None:
    """Stop a serial loop where the masks of the reductions under it keep every later step
    from adding anything: its extent becomes the smallest that still holds every step whose
    mask may be true for some thread or inner iteration (the same for every thread, so
    barriers under it stay uniform). Apply it after the loop nest is otherwise final.

        for jo in range(ceildiv(m, 128)):          trim_masked(jo) ->
          acc[i] += select(jo*128 + ji <= i + m - n, p[jo*128 + ji], 0)
        for jo in range(min(ceildiv(m, 128), max(1, (it*8 + 7 + m - n) // 128 + 1))):  ...

    Every block under the loop must be such a masked reduction, reduced (not indexed) by
    the loop, or write only buffers that blocks under the loop alone read.
    """
    lp, outer = state.loop(loop)
    name = lp.var.name
    if lp.kind not in ("serial", "unrolled"):
        raise ScheduleError(f"trim_masked needs a serial loop; {name} is {lp.kind}")
    under = [(n, path) for n, path in iter_nodes(lp.body, (lp,)) if isinstance(n, BlockRealize)]
    inside = {br.block.name for br, _ in under}
    readers: dict[Buffer, set[str]] = {}
    for br, _ in blocks(state.func):
        for buf in reads_of(br.block):
            readers.setdefault(buf, set()).add(br.block.name)
    params = set(state.func.params)
    threads = {x.var: x.extent for x in outer if _threaded(x)}
    tops: list[Expr] = []
    for br, path in under:
        blk = br.block
        local = all(b not in params and readers.get(b, set()) <= inside for b in writes_of(blk))
        if local:
            continue
        masked = masked_update(blk)
        if masked is None:
            raise ScheduleError(
                f"trim_masked({name}): block {blk.name!r} under it is no masked reduction "
                "(C = C op select(cond, x, identity)) and writes a buffer read outside the loop"
            )
        binding = dict(zip((iv.var for iv in blk.iter_vars), br.iter_values, strict=True))
        spatial = [binding[iv.var] for iv in blk.iter_vars if iv.kind == "spatial"]
        if any(uses_var(v, lp.var) for v in spatial):
            raise ScheduleError(
                f"trim_masked({name}): the loop indexes the output of {blk.name!r}; it must "
                "only iterate its reduction"
            )
        reduced = [binding[iv.var] for iv in blk.iter_vars if iv.kind == "reduce"]
        if any(_falls(v, lp.var) for v in reduced):
            raise ScheduleError(
                f"trim_masked({name}): {blk.name!r} does not step its reduction forward with "
                "the loop (its init must stay at the loop's first step)"
            )
        free = {**threads, **{x.var: x.extent for x in path[1:]}}
        top = _upper_bound(substitute(masked[1], binding), lp.var, free)
        if top is None:
            raise ScheduleError(
                f"trim_masked({name}): the mask of {blk.name!r} does not bound {name} from "
                "above (it needs a linear condition like j <= i + c on the loop's steps)"
            )
        tops.append(top)
    if not tops:
        raise ScheduleError(f"trim_masked({name}): no masked reduction under the loop")
    top = tops[0]
    for t in tops[1:]:
        top = binop("max", top, t)
    steps = binop("max", const(1), binop("add", top, const(1)))  # step 0 runs the inits
    extent = simplify(binop("min", lp.extent, steps))
    state.replace_loop(lp, dataclasses.replace(lp, extent=extent))


def _falls(binding: Expr, var: Var) -> bool:
    """Whether a reduce var's binding may not grow with `var` (a negative or non-linear use):
    the reduction's first step, where its init runs, would then not be the loop's first."""
    terms, _ = linear(binding)
    return any(
        (t == var and c < 0) or (t != var and uses_var(t, var)) for t, c in terms.items()
    )


def _threaded(loop: For) -> bool:
    return loop.kind == "thread_binding" and (loop.thread or "").startswith(
        ("threadIdx", "vthread")
    )


def masked_write_back(
    red_rhs: Expr, op: str, spatial: Mapping[Var, Expr], inner: Mapping[Var, Expr]
) -> Expr | None:
    """For rfactor: the condition under which a factored-out reduction's partial result
    may differ from the identity, when its update `red_rhs` is masked; None when not.
    `spatial` maps the rf block's iter vars to the write-back's; `inner` gives the extents
    of the reduction variables factored into the partial result."""
    cond = _mask_of(red_rhs, op)
    if cond is None:
        return None
    kept = simplify(substitute(exists_over(cond, inner), spatial))
    return None if kept == TRUE else kept


@primitive()
def mask_into_producer(state: ScheduleState, block: RV) -> None:
    """Move the mask of a masked sum's weight into the block that computes the weight: the
    weight becomes 0 where the mask is false, and the sum adds plain products, the shape a
    tensor-core tile takes (an MMA has no per-element select). Apply it after `trim_masked`,
    which reads the mask off the sum.

        p[i, j] = exp(s[i, j] - mx[i])
        acc[i, c] += select(j <= i + m - n, p[i, j], 0) * v[j, c]     mask_into_producer(acc) ->
        p[i, j] = select(j <= i + m - n, exp(s[i, j] - mx[i]), 0)
        acc[i, c] += p[i, j] * v[j, c]

    The weight must be a buffer that one block writes (no reduction) and only this block
    reads, at an index that names, as whole indices, every iter var the mask reads.
    """
    br, _ = state.block(block)
    blk = br.block
    store = blk.body
    found = reduction_update(store) if isinstance(store, BufferStore) else None
    if blk.init is None or found is None or found[0] != "add":
        raise ScheduleError(f"mask_into_producer: block {blk.name!r} is not a sum C = C + x")
    assert isinstance(store, BufferStore)
    term = found[1]
    moved: list[tuple[Expr, BufferLoad]] = []

    def unmask(e: Expr) -> Expr:
        """`e` (the sum's term) with the select on a weight's load replaced by the load."""
        if isinstance(e, BinOp) and e.op == "mul":
            return binop("mul", unmask(e.a), unmask(e.b))
        if isinstance(e, Select) and _is_identity(e.false_value, "add") and not moved:
            load = e.true_value.value if isinstance(e.true_value, Cast) else e.true_value
            if isinstance(load, BufferLoad) and load.buffer not in state.func.params:
                moved.append((e.cond, load))
                return e.true_value
        return e

    new_value = binop("add", BufferLoad(store.buffer, store.indices), unmask(term))
    if not moved:
        raise ScheduleError(
            f"mask_into_producer: block {blk.name!r} adds no select(cond, w, 0) on a weight "
            "an intermediate buffer holds"
        )
    cond, load = moved[0]
    reader = blk
    while True:  # through plain copies of the weight (a fragment's) to the block computing it
        producer, put, cond = _weight_producer(state, reader, load, cond)
        copied = put.value
        if not isinstance(copied, BufferLoad) or copied.buffer in state.func.params:
            break
        reader, load = producer, copied
    weight = put.buffer
    zero = const(0.0, weight.dtype)
    new_put = dataclasses.replace(put, value=Select(cond, put.value, zero))
    new_producer = with_regions(dataclasses.replace(producer, body=new_put))
    new_blk = with_regions(
        dataclasses.replace(blk, body=dataclasses.replace(store, value=new_value))
    )
    body = map_stmt(root_body(state.func), block_replacer(producer.name, new_producer))
    body = map_stmt(body, block_replacer(blk.name, new_blk))
    state.func = with_root(state.func, body)


def _weight_producer(
    state: ScheduleState, reader: Block, load: BufferLoad, cond: Expr
) -> tuple[Block, BufferStore, Expr]:
    """The block that writes the buffer `reader` reads at `load`, its store, and `cond`
    (over `reader`'s iter vars) renamed to its iter vars; ScheduleError where the buffer has
    other writers or readers, the block is no plain store, or `load` leaves a var of `cond`
    out of its indices."""
    weight = load.buffer
    writers = [b for b, _ in blocks(state.func) if weight in writes_of(b.block)]
    readers = [b for b, _ in blocks(state.func) if weight in reads_of(b.block)]
    if len(writers) != 1 or [r.block.name for r in readers] != [reader.name]:
        raise ScheduleError(
            f"mask_into_producer: {weight.name} must be written by one block and read by "
            f"{reader.name!r} alone (writers {[w.block.name for w in writers]}, readers "
            f"{[r.block.name for r in readers]})"
        )
    producer = writers[0].block
    put = producer.body
    if producer.init is not None or not isinstance(put, BufferStore):
        raise ScheduleError(f"mask_into_producer: {producer.name!r} is not a plain store")
    own = {iv.var for iv in reader.iter_vars}
    rename: dict[Var, Expr] = {}
    for at, idx in zip(load.indices, put.indices, strict=True):
        if isinstance(at, Var) and at in own:
            rename[at] = idx
    unnamed = sorted(
        v.name for v in walk(cond) if isinstance(v, Var) and v in own and v not in rename
    )
    if unnamed:
        raise ScheduleError(
            f"mask_into_producer: the mask reads {unnamed[0]}, which does not index "
            f"{weight.name} in {reader.name!r}"
        )
    return producer, put, substitute(cond, rename)


__all__ = [
    "exists_over",
    "mask_into_producer",
    "masked_update",
    "masked_write_back",
    "peel_mask",
    "trim_masked",
]
