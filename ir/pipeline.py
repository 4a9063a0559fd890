"""Software pipelining of a loop that copies tiles into shared memory and then computes on them.

A loop annotated `software_pipeline_stages = S` (Schedule.annotate on the loop) whose lowered
body is shared allocations around `[copy, ..., copy, compute]` becomes, with E iterations:

    alloc x_shared[S, ...]                       # one buffer per stage
    copies(k = 0); commit  ...  copies(k = S-2); commit        # prologue
    for k in range(E):
        wait(pending = S-2)                      # stage k has landed; barrier
        if k + S - 1 < E: copies(k + S - 1)      # into the buffer compute(k - 1) used
        commit
        compute(k)                               # reads stage k % S

so the copies of S - 1 later iterations are in flight while one iteration computes. On CUDA
the copies' 16-byte vector moves from global to shared memory become `cp.async` and the
commits and waits `cp.async.commit_group` / `cp.async.wait_group`; elsewhere they are plain
copies and the syncs are no-ops, so the program computes the same values everywhere.

With `software_pipeline_fragments = 1` as well, the compute must be (thread-bound loops
around) an unrolled loop of an even number T of steps, each loading register fragments from
the stage buffers and then computing on them. The fragments get two buffers, each step's loads
move one step ahead, and the wait and barrier move before the last step, whose fragments are
already loaded, so the tensor cores have work queued while the block synchronises:

    alloc x_shared[S, ...], frag[2, ...]
    copies(k = 0); commit  ...  copies(k = S-1); commit        # prologue: S stages
    wait(pending = S-1); frag[0] = load(k = 0, t = 0)
    for k in range(E):
        for t in range(T):                       # unrolled in the IR
            if t == T-1:
                wait(pending = S-2)              # stage k+1 has landed; barrier
                if k + S < E: copies(k + S)      # into the buffer stage k used
                commit
            frag[(t+1) % 2] = load(t+1 < T ? (k, t+1) : (k+1, 0))
            compute(frag[t % 2])

The last load of the loop reads a stage buffer that no copy writes any more; its fragments are
never used, so it needs no guard.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .annotation_keys import ASYNC_COPY, PIPELINE_FRAGMENTS, PIPELINE_STAGES
from .errors import LoweringError
from .expr import Buffer, BufferLoad, Const, Expr, Var, const
from .schedule_tree import make_seq
from .simplify import simplify
from .stmt import Allocate, BufferStore, For, IfThenElse, PipelineSync, SeqStmt, Stmt
from .visit import rewrite, substitute, walk


def pipeline_loops(s: Stmt) -> Stmt:
    """Expand every loop annotated with `software_pipeline_stages` (see the module docstring)."""

    def post(n: Any) -> Any:
        if isinstance(n, For):
            stages = dict(n.annotations).get(PIPELINE_STAGES)
            if stages is not None:
                return _expand(n, int(stages))
        return None

    return rewrite(s, post)


def _expand(loop: For, stages: int) -> Stmt:
    name = loop.var.name
    if stages < 2:
        raise LoweringError(f"loop {name}: software_pipeline_stages must be >= 2, got {stages}")
    if not isinstance(loop.extent, Const):
        raise LoweringError(f"loop {name} is pipelined but has symbolic extent {loop.extent}")
    extent = int(loop.extent.value)
    # A wait leaves `stages - 2` groups pending, which is only right once `stages - 1` groups
    # were committed ahead of the first iteration; a loop shorter than that gets fewer stages.
    stages = min(stages, extent + 1)
    bufs: list[Buffer] = []
    body = _peel_allocs(loop.body, bufs)
    shared = [b for b in bufs if b.scope == "shared"]
    stmts = list(body.stmts) if isinstance(body, SeqStmt) else [body]
    n_copy = _leading(stmts, lambda st: _is_copy(st, shared))
    if not shared or n_copy == 0 or n_copy == len(stmts):
        raise LoweringError(
            f"loop {name} is pipelined but its body is not shared-memory copies followed by "
            "compute; cache_read the operands into 'shared' and compute_at them at this loop"
        )
    copies, compute = stmts[:n_copy], stmts[n_copy:]
    if any(_stores(st, shared) for st in compute):
        raise LoweringError(f"loop {name}: the compute of a pipelined loop writes a copy buffer")
    if dict(loop.annotations).get(PIPELINE_FRAGMENTS):
        return _expand_fragments(loop, stages, bufs, shared, copies, compute)
    staged = {b: dataclasses.replace(b, shape=(const(stages), *b.shape)) for b in shared}
    v = loop.var

    def at(stmts_: list[Stmt], k: Expr) -> Stmt:
        body = make_seq(stmts_) if k is v else substitute(make_seq(stmts_), {v: k})
        return simplify_indices(_restage(body, staged, simplify(k % stages)))

    copy_body = _mark_async(make_seq(copies))
    prologue: list[Stmt] = []
    for s in range(stages - 1):
        prologue += [at([copy_body], const(s)), PipelineSync("commit")]
    ahead = simplify(v + (stages - 1))
    steady: list[Stmt] = [PipelineSync("wait", stages - 2)]
    if extent > stages - 1:
        cond = simplify(ahead < extent)
        issue = at([copy_body], ahead)
        steady.append(issue if isinstance(cond, Const) and cond.value else IfThenElse(cond, issue))
    steady += [PipelineSync("commit"), at(compute, v)]
    ann = tuple((k, x) for k, x in loop.annotations if k != PIPELINE_STAGES)
    main = dataclasses.replace(
        loop, body=make_seq(steady), annotations=((PIPELINE_STAGES, stages), *ann)
    )
    out: Stmt = SeqStmt((*prologue, main))
    for b in reversed(bufs):
        out = Allocate(staged.get(b, b), out)
    return out


def _expand_fragments(
    loop: For,
    stages: int,
    bufs: list[Buffer],
    shared: list[Buffer],
    copies: list[Stmt],
    compute: list[Stmt],
) -> Stmt:
    """The software pipeline with double-buffered fragments (see the module docstring)."""
    name, v = loop.var.name, loop.var
    extent = int(loop.extent.value)  # type: ignore[attr-defined]
    chain, inner = _thread_chain(make_seq(compute))
    if (
        inner is None
        or inner.kind != "unrolled"
        or not isinstance(inner.extent, Const)
        or int(inner.extent.value) % 2
    ):
        raise LoweringError(
            f"loop {name}: software_pipeline_fragments needs the compute to be an unrolled loop "
            "with an even number of steps (under thread-bound loops only); unroll the inner k "
            "loop and split it evenly"
        )
    steps = int(inner.extent.value)
    frags: list[Buffer] = []
    stmts = _peel_allocs(inner.body, frags)
    body = list(stmts.stmts) if isinstance(stmts, SeqStmt) else [stmts]
    n_load = _leading(body, lambda st: _stores(st, frags))
    if not frags or n_load in (0, len(body)) or any(_stores(st, frags) for st in body[n_load:]):
        raise LoweringError(
            f"loop {name}: software_pipeline_fragments needs each inner step to load fragments "
            "(cache_read into a register scope at the inner loop) and then compute on them"
        )
    stages = max(2, min(stages, extent))
    staged = {b: dataclasses.replace(b, shape=(const(stages), *b.shape)) for b in shared}
    rows = {b: b.shape[0] for b in frags}
    if not all(isinstance(r, Const) for r in rows.values()):
        raise LoweringError(f"loop {name}: fragment buffers need constant shapes")
    doubled = {
        b: dataclasses.replace(b, shape=(const(2 * int(rows[b].value)), *b.shape[1:]))  # type: ignore[attr-defined]
        for b in frags
    }

    def at(stmts_: list[Stmt], k: Expr, t: Expr | None = None, slot: int = 0) -> Stmt:
        mapping: dict[Var, Expr] = {v: k}
        if t is not None:
            mapping[inner.var] = t
        body = substitute(make_seq(stmts_), mapping)
        body = _restage(body, staged, simplify(k % stages))
        return simplify_indices(_reslot(body, doubled, rows, slot))

    def threads(s: Stmt) -> Stmt:
        for lp in reversed(chain):
            s = dataclasses.replace(lp, body=s)
        return s

    loads, work = body[:n_load], body[n_load:]
    copy_body = _mark_async(make_seq(copies))
    prologue: list[Stmt] = []
    for s in range(stages):
        if s < extent:
            prologue.append(at([copy_body], const(s)))
        prologue.append(PipelineSync("commit"))
    prologue += [PipelineSync("wait", stages - 1), threads(at(loads, const(0), const(0), 0))]
    steady: list[Stmt] = []
    for t in range(steps):
        if t == steps - 1:
            steady.append(PipelineSync("wait", stages - 2))
            if extent > stages:
                cond = simplify(v + stages < extent)
                steady.append(IfThenElse(cond, at([copy_body], simplify(v + stages))))
            steady.append(PipelineSync("commit"))
        nxt_k, nxt_t = (v, t + 1) if t + 1 < steps else (simplify(v + 1), 0)
        step = [at(loads, nxt_k, const(nxt_t), (t + 1) % 2), at(work, v, const(t), t % 2)]
        steady.append(threads(make_seq(step)))
    ann = tuple(
        (k, x) for k, x in loop.annotations if k not in (PIPELINE_STAGES, PIPELINE_FRAGMENTS)
    )
    main = dataclasses.replace(
        loop,
        body=make_seq(steady),
        annotations=((PIPELINE_STAGES, stages), (PIPELINE_FRAGMENTS, 1), *ann),
    )
    out: Stmt = SeqStmt((*prologue, main))
    for b in reversed(frags):
        out = Allocate(doubled[b], out)
    for b in reversed(bufs):
        out = Allocate(staged.get(b, b), out)
    return out


def _thread_chain(s: Stmt) -> tuple[list[For], For | None]:
    """The thread-bound loops wrapping `s` one inside the other, and the loop they end at."""
    chain: list[For] = []
    while isinstance(s, For) and s.kind == "thread_binding":
        chain.append(s)
        s = s.body
    return chain, s if isinstance(s, For) else None


def _reslot(s: Stmt, doubled: dict[Buffer, Buffer], rows: dict[Buffer, Expr], slot: int) -> Stmt:
    """Point accesses of the fragment buffers at their copy `slot` (rows stacked)."""

    def shift(b: Buffer, idx: tuple[Expr, ...]) -> tuple[Expr, ...]:
        return (idx[0] + rows[b] * slot, *idx[1:]) if slot else idx

    def post(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer in doubled:
            return BufferLoad(doubled[n.buffer], shift(n.buffer, n.indices))
        if isinstance(n, BufferStore) and n.buffer in doubled:
            return BufferStore(doubled[n.buffer], shift(n.buffer, n.indices), n.value)
        return None

    return rewrite(s, post)


def simplify_indices(s: Stmt) -> Stmt:
    """Simplify store and load indices after a substitution."""

    def post(n: Any) -> Any:
        if isinstance(n, BufferStore):
            return BufferStore(n.buffer, tuple(simplify(i) for i in n.indices), n.value)
        if isinstance(n, BufferLoad):
            return BufferLoad(n.buffer, tuple(simplify(i) for i in n.indices))
        return None

    return rewrite(s, post)


def _leading(stmts: list[Stmt], pred: Callable[[Stmt], bool]) -> int:
    """How many statements at the head of `stmts` satisfy `pred`."""
    n = 0
    while n < len(stmts) and pred(stmts[n]):
        n += 1
    return n


def _peel_allocs(s: Stmt, out: list[Buffer]) -> Stmt:
    """`s` without the allocations at its top level (through sequences), flattened; their
    buffers are appended to `out`."""
    if isinstance(s, Allocate):
        out.append(s.buffer)
        return _peel_allocs(s.body, out)
    if isinstance(s, SeqStmt):
        flat: list[Stmt] = []
        for c in s.stmts:
            c = _peel_allocs(c, out)
            flat.extend(c.stmts if isinstance(c, SeqStmt) else [c])
        return make_seq(flat)
    return s


def _stores(s: Stmt, bufs: list[Buffer]) -> bool:
    return any(isinstance(n, BufferStore) and n.buffer in bufs for n in walk(s))


def _is_copy(s: Stmt, bufs: list[Buffer]) -> bool:
    """Stores into the loop's shared buffers and reads none of them."""
    stores = [n for n in walk(s) if isinstance(n, BufferStore)]
    reads_own = any(isinstance(n, BufferLoad) and n.buffer in bufs for n in walk(s))
    return bool(stores) and all(n.buffer in bufs for n in stores) and not reads_own


def _restage(s: Stmt, staged: dict[Buffer, Buffer], stage: Expr) -> Stmt:
    def post(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer in staged:
            return BufferLoad(staged[n.buffer], (stage, *n.indices))
        if isinstance(n, BufferStore) and n.buffer in staged:
            return BufferStore(staged[n.buffer], (stage, *n.indices), n.value)
        return None

    return rewrite(s, post)


def _mark_async(s: Stmt) -> Stmt:
    """Annotate the innermost vectorized loops of the copies: candidates for cp.async."""

    def post(n: Any) -> Any:
        if isinstance(n, For) and n.kind == "vectorized":
            if not any(isinstance(x, For) for x in walk(n.body)):
                return dataclasses.replace(n, annotations=(*n.annotations, (ASYNC_COPY, 1)))
        return None

    return rewrite(s, post)
