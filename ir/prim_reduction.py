"""Reduction primitives: decompose_reduction splits a reduction's init from its update,
rfactor turns one reduction loop into a dimension of partial results."""

from __future__ import annotations

import dataclasses

from .errors import ScheduleError
from .expr import Buffer, BufferLoad, Expr, Select, Var, binop, const, logical_and
from .instruction_traits import primitive
from .prim_mask import masked_write_back
from .regions import with_regions
from .schedule_state import ScheduleState
from .schedule_tree import (
    block_replacer,
    children,
    find_block,
    is_identity_write,
    loop_vars_in,
    make_seq,
    map_stmt,
    reduce_loop_vars,
    reduction_update,
    root_body,
    spatial_loop_vars,
    store_of,
    with_root,
)
from .simplify import conjunction, conjuncts, simplify
from .stmt import TRUE, Block, BlockRealize, BufferStore, For, IterVar, Range, Stmt
from .trace import RV
from .visit import substitute, walk


@primitive(results="one")
def decompose_reduction(state: ScheduleState, block: RV, loop: RV) -> RV:
    """Pull a reduction's init out into its own block placed just before `loop`.

    for i: for k: C[i] = 0 if k == 0;  C[i] += A[i, k]        decompose_reduction(C, k) ->
    for i:
        C_init[i] = 0                  (block "C_init")
        for k: C[i] += A[i, k]         (block "C", no init)
    """
    br, loops = state.block(block)
    blk = br.block
    lp, lp_anc = state.loop(loop)
    if blk.init is None:
        raise ScheduleError(f"block {blk.name!r} has no init to decompose")
    if lp not in loops:
        raise ScheduleError(f"loop {lp.var.name} is not above block {blk.name!r}")
    red = reduce_loop_vars(br)
    if spatial_loop_vars(br) & red:
        raise ScheduleError(f"block {blk.name!r} has loops shared by spatial and reduce iter vars")
    below = list(loops[loops.index(lp) :])
    outer_red = [a.var.name for a in lp_anc if a.var in red]
    if outer_red:
        raise ScheduleError(
            f"reduce loop {outer_red[0]} runs outside {lp.var.name}; an init placed before "
            f"{lp.var.name} would reset block {blk.name!r} on every iteration of it"
        )
    driving = red | spatial_loop_vars(br)
    idle = [x.var.name for x in below if x.var not in driving]
    if idle:
        raise ScheduleError(
            f"loop {idle[0]} between {lp.var.name} and block {blk.name!r} drives none of "
            "its iter vars: the reduction is recomputed under it, so its init must stay "
            "inside"
        )
    names = state.names()
    copies = [
        (lp_, Var(names.fresh(f"{lp_.var.name}_init"))) for lp_ in below if lp_.var not in red
    ]
    ren = {old.var: new for old, new in copies}
    # a guard over the reduce loops alone bounds the updates, not the init; one that also
    # reads spatial loops (a symbolic split's tail) holds for the init where it holds at the
    # reduction's first step, so the init keeps it with the reduce loops at 0
    loop_vars = {x.var for x in loops}
    first = {v: const(0) for v in red}
    init_conds = []
    for c in conjuncts(br.predicate):
        vs = loop_vars_in(c) & loop_vars
        if vs & red and not vs - red:
            continue
        init_conds.append(substitute(substitute(c, first) if vs & red else c, ren))
    spatial_ivs = [iv for iv in blk.iter_vars if iv.kind == "spatial"]
    values = [
        substitute(v, ren)
        for iv, v in zip(blk.iter_vars, br.iter_values, strict=True)
        if iv.kind == "spatial"
    ]
    init_blk = with_regions(
        Block(names.fresh(f"{blk.name}_init"), tuple(spatial_ivs), (), (), blk.init)
    )
    pred: Expr = TRUE
    for c in init_conds:
        pred = c if pred == TRUE else logical_and(pred, c)
    nest: Stmt = BlockRealize(tuple(values), pred, init_blk)
    for old, new in reversed(copies):
        kind = old.kind if old.kind != "parallel" else "serial"
        thread = old.thread if kind == "thread_binding" else None
        nest = For(new, old.extent, nest, kind, thread)
    new_blk = with_regions(dataclasses.replace(blk, init=None))

    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, For) and s.var == lp.var:
            inner = map_stmt(s, block_replacer(blk.name, new_blk))
            return make_seq([nest, inner])
        return None

    body = map_stmt(root_body(state.func), fix)
    state.func = with_root(state.func, body)
    return state.new("b", init_blk.name)


@primitive(results="one")
def rfactor(state: ScheduleState, loop: RV, factor_axis: int) -> RV:
    """Factor a reduction over `loop` into partial results (an rf block) plus a final reduce.

    C[i] = sum_k A[i, k], k = k0*4 + k1, rfactor(k1, 0) ->
    C_rf[k1, i] = sum_k0 A[i, k0*4 + k1];  C[i] = sum_k1 C_rf[k1, i]
    """
    lp, _ = state.loop(loop)
    under = [n for n in walk(lp.body) if isinstance(n, BlockRealize)]
    if len(under) != 1:
        raise ScheduleError(
            f"rfactor needs exactly one block under loop {lp.var.name}, found {len(under)}"
        )
    br = under[0]
    blk = br.block
    store = store_of(blk)
    if blk.init is None or store is None:
        raise ScheduleError(f"block {blk.name!r} is not a reduction with an init")
    acc = store.buffer
    update = reduction_update(store)
    if update is None:
        raise ScheduleError(f"block {blk.name!r} is not a reduction update C = C + e (or max, min)")
    red_op, red_rhs = update
    if not is_identity_write(blk, store.indices):
        raise ScheduleError(f"block {blk.name!r} must store at exactly its spatial iter vars")
    red = reduce_loop_vars(br)
    if lp.var not in red:
        raise ScheduleError(f"loop {lp.var.name} does not iterate the reduction of {blk.name!r}")
    if lp.var in spatial_loop_vars(br):
        raise ScheduleError(f"loop {lp.var.name} also drives a spatial iter var of {blk.name!r}")
    if not 0 <= factor_axis <= len(acc.shape):
        raise ScheduleError(f"factor_axis must be in [0, {len(acc.shape)}], got {factor_axis}")
    pos, _ = state.root_nest_of(blk.name, "rfactor")
    _, loops = find_block(state.func, blk.name)  # type: ignore[misc]
    names = state.names()
    rf_block_name = names.fresh(f"{blk.name}_rf")
    rf_var = Var(names.fresh(f"v_{lp.var.name}"))
    red_loops = [x for x in loops if x.var in red and x.var != lp.var]
    new_red = {x.var: Var(names.fresh(f"v_{x.var.name}")) for x in red_loops}
    ren = {lp.var: rf_var, **new_red}
    red_sub = {
        iv.var: substitute(val, ren)
        for iv, val in zip(blk.iter_vars, br.iter_values, strict=True)
        if iv.kind == "reduce"
    }
    spatial = [iv for iv in blk.iter_vars if iv.kind == "spatial"]
    rf_shape = list(acc.shape)
    rf_shape.insert(factor_axis, simplify(lp.extent))
    rf_buf = Buffer(names.fresh(f"{acc.name}_rf"), tuple(rf_shape), acc.dtype, "global")
    rf_idx = list(store.indices)
    rf_idx.insert(factor_axis, rf_var)
    rhs = substitute(red_rhs, red_sub)
    # Guards over the reduction loops move into the value, so every rf slot the
    # write-back reads is initialised; guards over spatial loops stay on the realize.
    red_set = {lp.var, *new_red}
    spatial_guards: list[Expr] = []
    loop_set = {x.var for x in loops}  # symbolic dims (m in `k < m`) are no loops
    for cond in conjuncts(br.predicate):
        used = loop_vars_in(cond) & loop_set
        if used <= red_set:
            assert isinstance(blk.init, BufferStore)
            rhs = Select(substitute(cond, ren), rhs, blk.init.value)
        elif used & red_set:
            raise ScheduleError(
                f"block {blk.name!r} has a guard mixing spatial and reduction loops: {cond}"
            )
        else:
            spatial_guards.append(cond)
    rf_store = BufferStore(
        rf_buf, tuple(rf_idx), binop(red_op, BufferLoad(rf_buf, tuple(rf_idx)), rhs)
    )
    assert isinstance(blk.init, BufferStore)
    rf_init = BufferStore(rf_buf, tuple(rf_idx), blk.init.value)
    ivs = [*spatial, IterVar(rf_var, Range(const(0), simplify(lp.extent)), "spatial")]
    ivs += [IterVar(new_red[x.var], Range(const(0), x.extent), "reduce") for x in red_loops]
    rf_blk = with_regions(Block(rf_block_name, tuple(ivs), (), (), rf_store, rf_init))
    rf_values = [
        val for iv, val in zip(blk.iter_vars, br.iter_values, strict=True) if iv.kind == "spatial"
    ]
    rf_values += [lp.var] + [x.var for x in red_loops]
    rf_br = BlockRealize(tuple(rf_values), conjunction(spatial_guards), rf_blk)
    # write-back: C[i] = C[i] op C_rf[.., r, ..]
    wb_sp = [IterVar(Var(names.fresh(iv.var.name)), iv.dom, "spatial") for iv in spatial]
    wb_r = IterVar(
        Var(names.fresh(f"v_{lp.var.name}")), Range(const(0), simplify(lp.extent)), "reduce"
    )
    sp_map = {iv.var: n.var for iv, n in zip(spatial, wb_sp, strict=True)}
    wb_idx = tuple(substitute(i, sp_map) for i in store.indices)
    wb_rf_idx = list(wb_idx)
    wb_rf_idx.insert(factor_axis, wb_r.var)
    partial: Expr = BufferLoad(rf_buf, tuple(wb_rf_idx))
    # a masked update keeps its mask, over the factored-out steps, so that a loop the
    # mask leaves empty can be trimmed (prim_mask.trim_masked) at the write-back too
    red_bind = {
        iv.var: val
        for iv, val in zip(blk.iter_vars, br.iter_values, strict=True)
        if iv.kind == "reduce"
    }
    keep = masked_write_back(
        substitute(red_rhs, red_bind),
        red_op,
        {**sp_map, lp.var: wb_r.var},
        {x.var: x.extent for x in red_loops},
    )
    if keep is not None:
        partial = Select(keep, partial, blk.init.value)
    wb_store = BufferStore(acc, wb_idx, binop(red_op, BufferLoad(acc, wb_idx), partial))
    wb_init = BufferStore(acc, wb_idx, blk.init.value)
    wb_blk = with_regions(
        Block(
            blk.name,
            (*wb_sp, wb_r),
            (),
            (),
            wb_store,
            wb_init,
            blk.alloc_buffers,
            blk.annotations,
        )
    )
    loop_vars = [Var(names.fresh(f"{iv.var.name}_wb")) for iv in [*wb_sp, wb_r]]
    wb_nest: Stmt = BlockRealize(
        tuple(simplify(iv.dom.min + lv) for iv, lv in zip([*wb_sp, wb_r], loop_vars, strict=True)),
        TRUE,
        wb_blk,
    )
    for iv, lv in reversed(list(zip([*wb_sp, wb_r], loop_vars, strict=True))):
        wb_nest = For(lv, iv.dom.extent, wb_nest)
    body = map_stmt(
        root_body(state.func),
        lambda s: rf_br if isinstance(s, BlockRealize) and s.block.name == blk.name else None,
    )
    kids = children(body)
    kids.insert(pos + 1, wb_nest)
    state.func = with_root(state.func, make_seq(kids), (*state.func.root.alloc_buffers, rf_buf))
    return state.new("b", rf_blk.name)
