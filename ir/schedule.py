"""Schedule: transform a PrimFunc with primitives while recording a replayable Trace.

Handles are random variables (`RV`): a block handle names a block, a loop handle a loop
variable, an integer handle a sampled value. Every primitive is atomic: it computes a new
PrimFunc and either commits it together with its trace instruction or raises a ScheduleError
saying what and why, leaving the schedule exactly as it was.

Example (a 64x64x64 matmul block "C" with loops i, j, k):

    sch = Schedule(func)
    c = sch.get_block("C")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, 8])  # i_0 in range(8), i_1 in range(8), vi = i_0*8 + i_1
    sch.reorder(i0, j, i1)
    sch.parallel(i0)
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import random
from collections.abc import Iterator, Sequence
from typing import Any

from .annotation_keys import check_annotation
from .errors import ScheduleError
from .expr import (
    SCOPES,
    BinOp,
    Buffer,
    BufferLoad,
    Const,
    Expr,
    Select,
    Var,
    binop,
    const,
    logical_and,
)
from .intrinsics import get_intrin
from .lower import cross_thread_reduction, dim_window
from .regions import with_regions
from .schedule_tree import (
    EMPTY,
    all_names,
    blocks,
    children,
    find_block,
    find_loop,
    is_identity_write,
    loop_ranges,
    loop_vars_in,
    make_seq,
    map_stmt,
    read_only_buffers,
    reads_of,
    reduce_loop_vars,
    reduction_update,
    root_body,
    spatial_loop_vars,
    store_of,
    top_index,
    with_root,
    writes_of,
)
from .simplify import conjuncts, prove, simplify
from .stmt import (
    LOOP_KINDS,
    THREAD_TAGS,
    TRUE,
    Block,
    BlockRealize,
    BufferStore,
    For,
    IterVar,
    PrimFunc,
    Range,
    Stmt,
)
from .tensor_expr import NameSupply
from .trace import RV, Instruction, Trace
from .visit import rewrite, substitute, walk

ROOT_LOCATION = -1  # sample_compute_location decision: keep the block where it is


class Schedule:
    """A PrimFunc being transformed plus the trace of how (see module docstring)."""

    def __init__(self, func: PrimFunc, seed: int | None = None):
        if not isinstance(func, PrimFunc):
            raise TypeError(f"Schedule needs a PrimFunc, got {type(func).__name__}")
        self._orig = func
        self._func = func
        self._insts: list[Instruction] = []
        self._decisions: dict[int, Any] = {}
        self._values: dict[RV, Any] = {}
        self._next = 0
        self._rng = random.Random(seed)

    # ------------------------------------------------------------ state

    @property
    def func(self) -> PrimFunc:
        """The current PrimFunc."""
        return self._func

    @property
    def mod(self) -> PrimFunc:
        """The current PrimFunc (TVM's name for it)."""
        return self._func

    @property
    def original(self) -> PrimFunc:
        """The PrimFunc the schedule started from."""
        return self._orig

    @property
    def trace(self) -> Trace:
        """An immutable snapshot of the instructions and decisions so far."""
        return Trace(tuple(self._insts), dict(self._decisions))

    def copy(self) -> Schedule:
        """An independent schedule in the same state."""
        other = Schedule(self._orig)
        other._func = self._func
        other._insts = list(self._insts)
        other._decisions = dict(self._decisions)
        other._values = dict(self._values)
        other._next = self._next
        other._rng.setstate(self._rng.getstate())
        return other

    def get(self, rv: RV) -> Any:
        """What a handle refers to now: a Block, a For, or an int."""
        if rv.kind == "b":
            return self._block(rv)[0].block
        if rv.kind == "l":
            return self._loop(rv)[0]
        return self._value(rv)

    def show(self) -> str:
        """The current PrimFunc as text."""
        return self._func.script()

    @contextlib.contextmanager
    def _atomic(self) -> Iterator[None]:
        saved = (
            self._func,
            dict(self._values),
            self._next,
            len(self._insts),
            dict(self._decisions),
        )
        state = self._rng.getstate()
        try:
            yield
            if self._func is not saved[0]:
                self._check_races()
        except Exception:
            self._func, self._values, self._next, n, self._decisions = saved
            del self._insts[n:]
            self._rng.setstate(state)
            raise

    def _new(self, kind: str, value: Any) -> RV:
        rv = RV(kind, self._next)
        self._next += 1
        self._values[rv] = value
        return rv

    def _record(
        self,
        kind: str,
        inputs: Sequence[Any],
        attrs: dict[str, Any],
        outputs: Sequence[RV],
        decision: Any = None,
    ) -> None:
        idx = len(self._insts)
        self._insts.append(Instruction(kind, tuple(inputs), tuple(attrs.items()), tuple(outputs)))
        if decision is not None:
            self._decisions[idx] = decision

    def _block(self, rv: Any) -> tuple[BlockRealize, tuple[For, ...]]:
        if not isinstance(rv, RV) or rv.kind != "b" or rv not in self._values:
            raise ScheduleError(f"{rv!r} is not a block handle of this schedule")
        found = find_block(self._func, self._values[rv])
        if found is None:
            raise ScheduleError(
                f"block {self._values[rv]!r} no longer exists (it was inlined or removed)"
            )
        return found

    def _loop(self, rv: Any) -> tuple[For, tuple[For, ...]]:
        if not isinstance(rv, RV) or rv.kind != "l" or rv not in self._values:
            raise ScheduleError(f"{rv!r} is not a loop handle of this schedule")
        name = self._values[rv]
        if name is None:
            raise ScheduleError("the root location is not a loop")
        found = find_loop(self._func, name)
        if found is None:
            raise ScheduleError(f"loop {name!r} no longer exists (it was split, fused or removed)")
        return found

    def _value(self, rv: Any) -> int:
        if isinstance(rv, RV):
            if rv.kind != "v" or rv not in self._values:
                raise ScheduleError(f"{rv!r} is not an integer handle of this schedule")
            return int(self._values[rv])
        return rv

    def _names(self) -> NameSupply:
        return NameSupply(sorted(all_names(self._func)))

    # ------------------------------------------------------------ queries

    def get_block(self, name: str) -> RV:
        """The block called `name`."""
        with self._atomic():
            if find_block(self._func, name) is None:
                known = ", ".join(br.block.name for br, _ in blocks(self._func))
                raise ScheduleError(f"no block named {name!r}; blocks: {known}")
            rv = self._new("b", name)
            self._record("get_block", [name], {}, [rv])
        return rv

    def get_loops(self, block: RV) -> list[RV]:
        """The loops above `block`, outermost first."""
        with self._atomic():
            _, loops = self._block(block)
            out = [self._new("l", lp.var.name) for lp in loops]
            self._record("get_loops", [block], {}, out)
        return out

    def _related(self, block: RV, producers: bool) -> list[str]:
        br, _ = self._block(block)
        mine = br.block
        out = []
        for other, _ in blocks(self._func):
            if other.block.name == mine.name:
                continue
            if producers and writes_of(other.block) & reads_of(mine):
                out.append(other.block.name)
            if not producers and reads_of(other.block) & writes_of(mine):
                out.append(other.block.name)
        return out

    def get_producers(self, block: RV) -> list[RV]:
        """Blocks that write a buffer `block` reads."""
        with self._atomic():
            out = [self._new("b", n) for n in self._related(block, True)]
            self._record("get_producers", [block], {}, out)
        return out

    def get_consumers(self, block: RV) -> list[RV]:
        """Blocks that read a buffer `block` writes."""
        with self._atomic():
            out = [self._new("b", n) for n in self._related(block, False)]
            self._record("get_consumers", [block], {}, out)
        return out

    # ------------------------------------------------------------ loop transformations

    def split(self, loop: RV, factors: Sequence[int | RV | None]) -> list[RV]:
        """Split a loop into len(factors) nested loops (outermost first).

        One factor may be None and is inferred. When the factors' product exceeds the extent
        (or the extent is symbolic) the blocks below get the guard `fused < extent`.

            for i in range(10): B[i] = ...        split(i, [None, 4]) ->
            for i_0 in range(3): for i_1 in range(4): if i_0*4 + i_1 < 10: B[i_0*4 + i_1] = ...
        """
        with self._atomic():
            lp, _ = self._loop(loop)
            vals = [None if f is None else self._value(f) for f in factors]
            if len(vals) < 2:
                raise ScheduleError("split needs at least two factors")
            if sum(v is None for v in vals) > 1:
                raise ScheduleError("at most one split factor may be None (inferred)")
            if any(v is not None and (not isinstance(v, int) or v <= 0) for v in vals):
                raise ScheduleError(f"split factors must be positive ints, got {vals}")
            known = 1
            for v in vals:
                if v is not None:
                    known *= v
            ext = simplify(lp.extent)
            exts: list[Expr]
            if None in vals:
                if isinstance(ext, Const):
                    inferred: Expr = const(-(-int(ext.value) // known))
                else:
                    inferred = simplify(binop("floordiv", ext + (known - 1), known))
                exts = [inferred if v is None else const(v) for v in vals]
            else:
                if not isinstance(ext, Const):
                    raise ScheduleError(
                        f"loop {lp.var.name} has symbolic extent {ext}; make one factor "
                        "None to infer it"
                    )
                if known < int(ext.value):
                    raise ScheduleError(
                        f"factors {vals} multiply to {known}, less than the extent "
                        f"{ext.value} of {lp.var.name}"
                    )
                exts = [const(v) for v in vals]  # type: ignore[arg-type]
            names = self._names()
            new_vars = [Var(names.fresh(f"{lp.var.name}_{i}")) for i in range(len(exts))]
            fused: Expr = new_vars[0]
            for v, e in zip(new_vars[1:], exts[1:], strict=True):
                fused = fused * e + v
            fused = simplify(fused)
            prod = simplify(_product(exts))
            perfect = isinstance(prod, Const) and isinstance(ext, Const) and prod.value == ext.value
            guard = None if perfect else binop("lt", fused, ext)
            body = _substitute_realizes(lp.body, {lp.var: fused}, guard)
            nest: Stmt = body
            for v, e in reversed(list(zip(new_vars, exts, strict=True))):
                nest = For(v, e, nest)
            self._replace_loop(lp, nest)
            out = [self._new("l", v.name) for v in new_vars]
            self._record("split", [loop, list(factors)], {}, out)
        return out

    def fuse(self, *loops: RV) -> RV:
        """Fuse perfectly nested consecutive loops into one (outer to inner order)."""
        with self._atomic():
            if len(loops) < 2:
                raise ScheduleError("fuse needs at least two loops")
            found = [self._loop(lp)[0] for lp in loops]
            for outer, inner in itertools.pairwise(found):
                if outer.body is not inner and outer.body != inner:
                    raise ScheduleError(
                        f"loops {outer.var.name} and {inner.var.name} are not perfectly "
                        "nested one inside the other"
                    )
            fused_vars = {lp.var for lp in found}
            for n in walk(found[-1].body):
                if isinstance(n, BlockRealize):
                    sp = fused_vars & spatial_loop_vars(n)
                    rd = fused_vars & reduce_loop_vars(n)
                    idle = fused_vars - sp - rd
                    if idle and (sp or rd):
                        raise ScheduleError(
                            f"block {n.block.name!r} does not depend on loop "
                            f"{sorted(v.name for v in idle)[0]} but does on the others; fused, "
                            "the block would repeat inside one loop it depends on"
                        )
                    if sp and rd:
                        raise ScheduleError(
                            f"cannot fuse spatial loop {sorted(v.name for v in sp)[0]} with "
                            f"reduction loop {sorted(v.name for v in rd)[0]} of block "
                            f"{n.block.name!r}: its init would no longer run first"
                        )
            names = self._names()
            fv = Var(names.fresh("_".join(lp.var.name for lp in found) + "_fused"))
            exts = [simplify(lp.extent) for lp in found]
            mapping: dict[Var, Expr] = {}
            stride: Expr = const(1)
            for lp, e in reversed(list(zip(found, exts, strict=True))):
                q = fv if stride == const(1) else binop("floordiv", fv, stride)
                if e == const(1):
                    mapping[lp.var] = const(0)  # a unit loop contributes nothing
                else:
                    mapping[lp.var] = q if lp is found[0] else binop("floormod", q, e)
                stride = simplify(stride * e)
            total = simplify(_product(exts))
            ranges = {fv: (0, int(total.value) - 1)} if isinstance(total, Const) else {}
            mapping = {k: simplify(v, ranges) for k, v in mapping.items()}
            body = _substitute_realizes(found[-1].body, mapping, None, ranges)
            self._replace_loop(found[0], For(fv, total, body))
            rv = self._new("l", fv.name)
            self._record("fuse", list(loops), {}, [rv])
        return rv

    def reorder(self, *loops: RV) -> None:
        """Reorder loops of one perfectly nested chain; loops not named keep their places."""
        with self._atomic():
            found = [self._loop(lp) for lp in loops]
            names = [f.var.name for f, _ in found]
            if len(set(names)) != len(names):
                raise ScheduleError(f"reorder got a loop twice: {names}")
            depth = {f.var.name: len(anc) for f, anc in found}
            outer_f, _outer_anc = min(found, key=lambda x: len(x[1]))
            chain: list[For] = []
            cur: Stmt = outer_f
            wanted = set(names)
            while isinstance(cur, For):
                chain.append(cur)
                wanted.discard(cur.var.name)
                if not wanted:
                    break
                cur = cur.body
                if not isinstance(cur, For):
                    raise ScheduleError(
                        f"loops {', '.join(names)} are not in one perfectly nested chain "
                        "(a loop body holds "
                        "more than one statement)"
                    )
            if wanted:
                raise ScheduleError(
                    f"loops {sorted(wanted)} are not nested under {outer_f.var.name}"
                )
            del depth
            positions = [i for i, lp in enumerate(chain) if lp.var.name in names]
            by_name = {lp.var.name: lp for lp in chain}
            new_chain = list(chain)
            for pos, name in zip(positions, names, strict=True):
                new_chain[pos] = by_name[name]
            inner_body = chain[-1].body
            nest: Stmt = inner_body
            for lp in reversed(new_chain):
                nest = dataclasses.replace(lp, body=nest)
            self._replace_loop(outer_f, nest)
            self._record("reorder", list(loops), {}, [])

    def _set_kind(self, loop: RV, kind: str, thread: str | None = None) -> None:
        lp, _ = self._loop(loop)
        if kind == "vectorized" and any(isinstance(n, For) for n in walk(lp.body)):
            raise ScheduleError(
                f"cannot vectorize loop {lp.var.name}: only innermost loops can be vectorized"
            )
        self._replace_loop(lp, dataclasses.replace(lp, kind=kind, thread=thread))

    def _check_races(self) -> None:
        """Refuse any state where iterations of a parallel, vectorized or thread-bound loop
        would race: a block iterating its reduction over such a loop, or a block that does not
        depend on the loop writing a buffer that is not private to it."""
        for lp, _ in _loops(self._func):
            if lp.kind not in ("parallel", "vectorized", "thread_binding"):
                continue
            kind = {"thread_binding": "thread-bound"}.get(lp.kind, lp.kind)
            for n in walk(lp.body):
                if not isinstance(n, BlockRealize):
                    continue
                if lp.var in reduce_loop_vars(n):
                    if cross_thread_reduction(lp, n):
                        continue  # lowered to a combine across the threads of the axis
                    if lp.kind == "vectorized" and _simd_reduction(lp, n) is None:
                        continue
                    reason = (
                        _simd_reduction(lp, n)
                        if lp.kind == "vectorized"
                        else "so iterations would race on the same output"
                    )
                    raise ScheduleError(
                        f"{kind} loop {lp.var.name} would iterate the reduction of block "
                        f"{n.block.name!r}, {reason}"
                    )
                if lp.var not in spatial_loop_vars(n) and not self._private_under(n.block, lp):
                    raise ScheduleError(
                        f"block {n.block.name!r} does not depend on {kind} loop {lp.var.name} "
                        "and writes a buffer shared across its iterations, so they would race"
                    )

    def _private_under(self, blk: Block, lp: For) -> bool:
        """True when everything `blk` writes is an intermediate used only under `lp`.

        Lowering then allocates it inside the loop, so each iteration has its own copy and a
        block that does not depend on the loop variable cannot race.
        """
        under = {n.block.name for n in walk(lp) if isinstance(n, BlockRealize)}
        for buf in writes_of(blk):
            if buf in self._func.params:
                return False
            for other, _ in blocks(self._func):
                touches = buf in reads_of(other.block) or buf in writes_of(other.block)
                if touches and other.block.name not in under:
                    return False
        return True

    def parallel(self, loop: RV) -> None:
        """Run the loop's iterations on parallel threads (OpenMP on the CPU)."""
        with self._atomic():
            self._set_kind(loop, "parallel")
            self._record("parallel", [loop], {}, [])

    def vectorize(self, loop: RV) -> None:
        """Mark an innermost loop for SIMD execution."""
        with self._atomic():
            self._set_kind(loop, "vectorized")
            self._record("vectorize", [loop], {}, [])

    def unroll(self, loop: RV) -> None:
        """Ask the compiler to unroll the loop."""
        with self._atomic():
            self._set_kind(loop, "unrolled")
            self._record("unroll", [loop], {}, [])

    def bind(self, loop: RV, thread: str) -> None:
        """Bind the loop to a GPU thread axis (blockIdx.x, threadIdx.x, ...)."""
        with self._atomic():
            if thread not in THREAD_TAGS:
                raise ScheduleError(
                    f"unknown thread axis {thread!r}; known: {', '.join(THREAD_TAGS)}"
                )
            self._set_kind(loop, "thread_binding", thread)
            self._record("bind", [loop, thread], {}, [])

    def annotate(self, target: RV, key: str, value: Any) -> None:
        """Attach a key/value annotation to a block or a loop (JSON-able value, or an integer
        handle from a sampling step, so that a replay with another decision annotates anew)."""
        check_annotation(
            key, value, "block" if isinstance(target, RV) and target.kind == "b" else "loop"
        )
        with self._atomic():
            given, value = value, self._value(value) if isinstance(value, RV) else value
            if not isinstance(value, str | int | float | bool):
                raise ScheduleError(
                    f"annotation values must be str, int, float or bool, got {value!r}"
                )
            if isinstance(target, RV) and target.kind == "b":
                br, _ = self._block(target)
                ann = (*tuple((k, v) for k, v in br.block.annotations if k != key), (key, value))
                self._replace_block(br.block.name, dataclasses.replace(br.block, annotations=ann))
            else:
                lp, _ = self._loop(target)
                ann = (*tuple((k, v) for k, v in lp.annotations if k != key), (key, value))
                self._replace_loop(lp, dataclasses.replace(lp, annotations=ann))
            self._record("annotate", [target, key, given], {}, [])

    # ------------------------------------------------------------ caches

    def cache_read(self, block: RV, read_buffer_index: int, storage_scope: str) -> RV:
        """Copy a buffer `block` reads into a new buffer of `storage_scope` just before it.

        The copy covers the whole buffer; compute_at the returned block to copy a tile.
        """
        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            _check_scope(storage_scope)
            reads = read_only_buffers(blk)
            if not 0 <= read_buffer_index < len(reads):
                raise ScheduleError(
                    f"block {blk.name!r} reads {len(reads)} buffers "
                    f"({', '.join(b.name for b in reads)}); "
                    f"index {read_buffer_index} is out of range"
                )
            buf = reads[read_buffer_index]
            pos = top_index(
                self._func, lambda n: isinstance(n, BlockRealize) and n.block.name == blk.name
            )
            nest_top = children(root_body(self._func))[pos]
            for n in walk(nest_top):
                if isinstance(n, Block) and buf in writes_of(n):
                    raise ScheduleError(
                        f"block {n.name!r} writes {buf.name} in the same loop nest as "
                        f"{blk.name!r}; "
                        "a copy placed before the nest would miss its values"
                    )
            names = self._names()
            cache = Buffer(
                names.fresh(f"{buf.name}_{storage_scope.replace('.', '_')}"),
                buf.shape,
                buf.dtype,
                storage_scope,
            )
            copy_nest = _copy_nest(names, cache.name, buf, cache)
            new_blk = with_regions(_replace_buffer(blk, buf, cache, loads_only=True))
            body = map_stmt(root_body(self._func), _block_replacer(blk.name, new_blk))
            kids = children(body)
            kids.insert(pos, copy_nest)
            self._func = with_root(
                self._func, make_seq(kids), (*self._func.root.alloc_buffers, cache)
            )
            rv = self._new("b", cache.name)
            self._record("cache_read", [block, read_buffer_index, storage_scope], {}, [rv])
        return rv

    def cache_write(self, block: RV, write_buffer_index: int, storage_scope: str) -> RV:
        """Make `block` write a new buffer of `storage_scope`, copied back right after its nest.

        Reverse-compute-at the returned block to write back tile by tile.
        """
        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            _check_scope(storage_scope)
            buf = _written_buffer(blk, write_buffer_index)
            self._check_sole_writer(blk, buf, "cache_write")
            pos = top_index(
                self._func, lambda n: isinstance(n, BlockRealize) and n.block.name == blk.name
            )
            nest_top = children(root_body(self._func))[pos]
            for n in walk(nest_top):
                if (
                    isinstance(n, Block)
                    and n.name != blk.name
                    and (buf in reads_of(n) or buf in writes_of(n))
                ):
                    raise ScheduleError(
                        f"block {n.name!r} uses {buf.name} in the same loop nest as {blk.name!r}; "
                        "a write-back after the nest would come too late for it"
                    )
            names = self._names()
            cache = Buffer(
                names.fresh(f"{buf.name}_{storage_scope.replace('.', '_')}"),
                buf.shape,
                buf.dtype,
                storage_scope,
            )
            new_blk = with_regions(_replace_buffer(blk, buf, cache, loads_only=False))
            copy_nest = _copy_nest(names, names.fresh(f"{buf.name}_write_back"), cache, buf)
            body = map_stmt(root_body(self._func), _block_replacer(blk.name, new_blk))
            kids = children(body)
            kids.insert(pos + 1, copy_nest)
            self._func = with_root(
                self._func, make_seq(kids), (*self._func.root.alloc_buffers, cache)
            )
            wb = copy_nest
            while isinstance(wb, For):
                wb = wb.body
            assert isinstance(wb, BlockRealize)
            rv = self._new("b", wb.block.name)
            self._record("cache_write", [block, write_buffer_index, storage_scope], {}, [rv])
        return rv

    def set_scope(self, block: RV, write_buffer_index: int, storage_scope: str) -> None:
        """Move the intermediate buffer `block` writes to another storage scope.

        On the GPU a reduction computed under a blockIdx loop keeps its result in "shared"
        (every thread of the block reads it) or "local" (only its thread reads it).
        Parameters stay global.
        """
        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            _check_scope(storage_scope)
            buf = _written_buffer(blk, write_buffer_index)
            if buf in self._func.params:
                raise ScheduleError(
                    f"{buf.name} is a parameter of {self._func.name}; parameters stay global"
                )
            new = dataclasses.replace(buf, scope=storage_scope)
            self._func = rewrite(self._func, lambda n: new if n == buf else None)
            self._record("set_scope", [block, write_buffer_index, storage_scope], {}, [])

    def storage_align(
        self, block: RV, write_buffer_index: int, axis: int, factor: int, offset: int
    ) -> None:
        """Pad the buffer `block` writes so the stride of `axis` is `offset` mod `factor`
        elements (the row of a shared tile then starts in another bank: fewer conflicts).

        Only the next-to-last axis can be aligned (its stride is the padded last dim).
        """
        from .lower import STORAGE_ALIGN

        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            buf = _written_buffer(blk, write_buffer_index)
            if buf in self._func.params:
                raise ScheduleError(f"{buf.name} is a parameter; only intermediates are padded")
            if axis != len(buf.shape) - 2:
                raise ScheduleError(
                    f"storage_align pads the row stride: axis must be {len(buf.shape) - 2} "
                    f"for {buf.name}, got {axis}"
                )
            if factor <= 0 or not 0 <= offset < factor:
                raise ScheduleError(
                    f"need factor > 0 and 0 <= offset < factor, got {factor}, {offset}"
                )
            value = f"{buf.name}:{factor}:{offset}"
            kept = tuple((k, x) for k, x in blk.annotations if k != STORAGE_ALIGN)
            new_blk = dataclasses.replace(blk, annotations=(*kept, (STORAGE_ALIGN, value)))
            self._replace_block(blk.name, new_blk)
            self._record("storage_align", [block, write_buffer_index, axis, factor, offset], {}, [])

    def transform_layout(
        self,
        block: RV,
        write_buffer_index: int,
        axis: int | None,
        factor: int | RV | None,
        order: Sequence[int],
    ) -> None:
        """Change the layout of the intermediate buffer `block` writes: split dim `axis` by
        `factor` (an int or an integer handle from a sampling step, so a replay with another
        decision packs anew), then reorder the dims as `order` (see `layout.LayoutMap`). The
        producer's writes, every consumer's reads and the allocation follow; loops stay.

        Packing a dense weight so 16 output columns are contiguous for every k
        (`transform_layout(w_global_block, 0, 0, 16, [0, 2, 1])`):

            before:  alloc w_global: Buffer((64, 32))
                     w_global[v0, v1] = w[v0, v1]
                     ... x[v_i, v_k] * w_global[v_j, v_k]
            after:   alloc w_global: Buffer((4, 32, 16))
                     w_global[v0 // 16, v1, v0 % 16] = w[v0, v1]
                     ... x[v_i, v_k] * w_global[v_j // 16, v_k, v_j % 16]

        After splitting the consumer's j loop by 16 the indices simplify to (j_0, k, j_1), so
        a vectorized j_1 loads 16 contiguous floats.
        """
        from .layout import LayoutMap
        from .lower import storage_aligns

        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            buf = _written_buffer(blk, write_buffer_index)
            if buf in self._func.params:
                raise ScheduleError(
                    f"{buf.name} is a parameter of {self._func.name}; only intermediates change "
                    "layout (cache_read it first)"
                )
            if buf.name in storage_aligns(self._func):
                raise ScheduleError(
                    f"{buf.name} is padded by storage_align; transform its layout first"
                )
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in order):
                raise ScheduleError(f"order must be a list of ints, got {list(order)!r}")
            given, factor = factor, self._value(factor) if isinstance(factor, RV) else factor
            lmap = LayoutMap(axis, factor, tuple(order))
            lmap.check(buf)
            new = dataclasses.replace(buf, shape=lmap.shape(buf.shape))

            def accesses(n: Any) -> Any:
                if isinstance(n, BufferLoad) and n.buffer == buf:
                    return BufferLoad(buf, lmap.indices(n.indices))
                if isinstance(n, BufferStore) and n.buffer == buf:
                    return BufferStore(buf, lmap.indices(n.indices), n.value)
                return None

            func = rewrite(self._func, accesses)
            func = rewrite(func, lambda n: new if isinstance(n, Buffer) and n == buf else None)

            def regions(s: Stmt) -> Stmt | None:
                if isinstance(s, BlockRealize) and s.block.name != func.root.name:
                    touched = reads_of(s.block) | writes_of(s.block)
                    if new in touched:
                        return dataclasses.replace(s, block=with_regions(s.block))
                return None

            self._func = with_root(func, map_stmt(root_body(func), regions))
            self._record(
                "transform_layout",
                [block, write_buffer_index, axis, given, list(order)],
                {},
                [],
            )

    def tensorize(self, loop: RV, intrin: str) -> None:
        """Replace the nest rooted at `loop` by a tensor intrinsic (see `intrinsics.py`).

        The nest must be perfectly nested with the intrinsic's extents around one block that
        computes what the intrinsic does; the loop is annotated and the CUDA renderer emits
        the intrinsic in its place. for i, j, k in 16 x 16 x 16: acc[i, j] += a[i, k] * b[j, k]
        -> wmma load_matrix_sync(a), load_matrix_sync(b), mma_sync(acc); with the mma.sync
        family a and b are register fragments filled by ldmatrix-tensorized copy nests.
        """
        from .expr import BinOp, BufferLoad, Cast

        with self._atomic():
            info = get_intrin(intrin)
            lp, _ = self._loop(loop)
            chain = [lp]
            while isinstance(chain[-1].body, For):
                chain.append(chain[-1].body)
            body = chain[-1].body
            what = f"tensorize({lp.var.name}, {intrin!r})"
            extents = tuple(
                int(c.extent.value) if isinstance(c.extent, Const) else -1 for c in chain
            )
            if extents != info.extents:
                raise ScheduleError(
                    f"{what}: needs a perfect nest of extents {info.extents}, found {extents}"
                )
            if not isinstance(body, BlockRealize):
                raise ScheduleError(f"{what}: the nest must end in one block")
            blk = body.block
            store = blk.body
            if not isinstance(store, BufferStore):
                raise ScheduleError(f"{what}: block {blk.name!r} is not a single store")
            acc_scope = info.acc_scope
            v = store.value
            if info.kind == "load":  # shared tile -> register fragment of the same dtype
                ok = (
                    store.buffer.scope == acc_scope
                    and isinstance(v, BufferLoad)
                    and v.buffer.scope == "shared"
                    and v.dtype == store.buffer.dtype
                    and v.dtype in ("float16", "bfloat16")
                )
            elif info.kind == "fill":
                ok = store.buffer.scope == acc_scope and isinstance(v, Const) and v.value == 0
            elif info.kind == "store":
                ok = isinstance(v, BufferLoad) and v.buffer.scope == acc_scope
                ok = ok and store.buffer.dtype == info.acc_dtype
            else:
                ok = (
                    blk.init is None
                    and store.buffer.scope == acc_scope
                    and isinstance(v, BinOp)
                    and v.op == "add"
                    and isinstance(v.b, BinOp)
                    and v.b.op == "mul"
                    and all(
                        isinstance(x, Cast)
                        and isinstance(x.value, BufferLoad)
                        and x.value.dtype == info.in_dtype
                        for x in (v.b.a, v.b.b)
                    )
                )
                if ok and info.operand_scopes:
                    scopes = {x.value.buffer.scope for x in (v.b.a, v.b.b)}  # type: ignore[union-attr]
                    ok = scopes == set(info.operand_scopes)
            if not ok:
                raise ScheduleError(
                    f"{what}: block {blk.name!r} does not compute {info.doc} into a "
                    f"{acc_scope} buffer (mma blocks need decompose_reduction first)"
                )
            kept = tuple((k, x) for k, x in lp.annotations if k != "tensorize")
            ann = (*kept, ("tensorize", intrin))
            self._replace_loop(lp, dataclasses.replace(lp, annotations=ann))
            self._record("tensorize", [loop, intrin], {}, [])

    # ------------------------------------------------------------ compute location

    def _root_nest_of(self, name: str, what: str) -> tuple[int, Stmt]:
        pos = top_index(self._func, lambda n: isinstance(n, BlockRealize) and n.block.name == name)
        nest = children(root_body(self._func))[pos]
        inner = [n.block.name for n in walk(nest) if isinstance(n, BlockRealize)]
        if inner != [name]:
            raise ScheduleError(
                f"{what} needs block {name!r} alone in its own loop nest at the root, but "
                "that nest also "
                f"holds {', '.join(b for b in inner if b != name)}"
            )
        return pos, nest

    def compute_at(self, block: RV, loop: RV) -> None:
        """Move a producer under a loop of its consumers, computing only the region they need.

        Fails when a consumer of the block lies outside the loop, when the block reads a
        buffer that is written later than the new position, or when the block does not write
        its iteration space directly.
        """
        with self._atomic():
            if isinstance(loop, RV) and loop.kind == "l" and self._values.get(loop, "") is None:
                self._record("compute_at", [block, loop], {}, [])
                return
            br, _ = self._block(block)
            blk = br.block
            lp, _lp_anc = self._loop(loop)
            if any(isinstance(n, BlockRealize) and n.block.name == blk.name for n in walk(lp)):
                raise ScheduleError(f"block {blk.name!r} is already under loop {lp.var.name}")
            store = store_of(blk)
            if store is None or not is_identity_write(blk, store.indices):
                raise ScheduleError(
                    f"compute_at needs block {blk.name!r} to store to its buffer at "
                    "exactly its spatial iter vars"
                )
            out = store.buffer
            if out in self._func.params:
                raise ScheduleError(
                    f"block {blk.name!r} writes the function output {out.name}, which must be "
                    "produced whole; move its consumer with reverse_compute_at instead"
                )
            self._check_sole_writer(blk, out, "compute_at")
            pos, _ = self._root_nest_of(blk.name, "compute_at")
            target_pos = top_index(self._func, lambda n: isinstance(n, For) and n.var == lp.var)
            if target_pos <= pos:
                raise ScheduleError(
                    f"loop {lp.var.name} runs before block {blk.name!r}; compute_at only "
                    "moves a producer later"
                )
            under = {n.block.name for n in walk(lp) if isinstance(n, BlockRealize)}
            consumers = [
                b
                for b, _ in blocks(self._func)
                if out in reads_of(b.block) and b.block.name != blk.name
            ]
            if not consumers or not any(c.block.name in under for c in consumers):
                raise ScheduleError(f"loop {lp.var.name} holds no consumer of block {blk.name!r}")
            outside = [c.block.name for c in consumers if c.block.name not in under]
            if outside:
                raise ScheduleError(
                    f"block {blk.name!r} also feeds {', '.join(outside)} outside loop "
                    f"{lp.var.name}; moving it "
                    "there would break that dependency"
                )
            self._check_no_writer_between(blk, pos, target_pos, lp)
            # region of `out` the consumers under the loop read, per dim
            windows = self._consumer_windows(lp, out)
            self._move_into(blk, br, out, windows, pos, lp, at_end=False)
            self._record("compute_at", [block, loop], {}, [])

    def _check_sole_writer(self, blk: Block, buf: Buffer, what: str) -> None:
        others = [
            b.block.name
            for b, _ in blocks(self._func)
            if b.block.name != blk.name and buf in writes_of(b.block)
        ]
        if others:
            raise ScheduleError(
                f"{what} needs block {blk.name!r} to be the only writer of {buf.name}, but "
                f"{', '.join(others)} also write it (apply {what} before decompose_reduction)"
            )

    def _check_no_writer_between(self, blk: Block, pos: int, target_pos: int, lp: For) -> None:
        kids = children(root_body(self._func))
        reads = reads_of(blk)
        for k in range(pos + 1, target_pos + 1):
            for n in walk(kids[k]):
                if isinstance(n, Block) and n.name != blk.name and writes_of(n) & reads:
                    shared = ", ".join(sorted(b.name for b in writes_of(n) & reads))
                    raise ScheduleError(
                        f"block {blk.name!r} reads {shared}, which block {n.name!r} "
                        "writes before loop "
                        f"{lp.var.name} ends; moving it would read stale values"
                    )

    def _consumer_windows(self, lp: For, buf: Buffer) -> list[tuple[Expr, Expr]]:
        inner = loop_ranges([n for n in walk(lp.body) if isinstance(n, For)])
        unbounded = {
            n.var for n in walk(lp.body) if isinstance(n, For) and not isinstance(n.extent, Const)
        }
        per_dim: list[list[Expr]] = [[] for _ in buf.shape]
        for n in walk(lp.body):
            if not isinstance(n, BlockRealize):
                continue
            mapping = {iv.var: v for iv, v in zip(n.block.iter_vars, n.iter_values, strict=True)}
            for acc in walk(n.block.body):
                if isinstance(acc, BufferLoad) and acc.buffer == buf:
                    for d, idx in enumerate(acc.indices):
                        per_dim[d].append(simplify(substitute(idx, mapping)))
        return _windows(per_dim, buf, inner, unbounded)

    def _move_into(
        self,
        blk: Block,
        br: BlockRealize,
        buf: Buffer,
        windows: list[tuple[Expr, Expr]],
        pos: int,
        lp: For,
        at_end: bool,
        var_order: list[Var] | None = None,
        extra_guards: list[Expr] | None = None,
    ) -> None:
        names = self._names()
        store = store_of(blk)
        assert store is not None
        dim_of = {v: d for d, v in enumerate(store.indices)}
        spatial = [iv for iv in blk.iter_vars if iv.kind == "spatial"]
        order = var_order or [v for v in store.indices]  # type: ignore[misc]
        loops: list[tuple[Var, Expr]] = []
        values: dict[Var, Expr] = {}
        guards: list[Expr] = []
        for v in order:
            d = dim_of[v]
            off, ext = windows[d]
            iv = next(i for i in spatial if i.var == v)
            if isinstance(ext, Const) and ext.value == 1:
                values[v] = off
            else:
                ax = Var(names.fresh(f"ax{d}"))
                loops.append((ax, ext))
                values[v] = simplify(off + ax)
            hi = simplify(iv.dom.min + iv.dom.extent)
            rng = loop_ranges([*self._loop_chain(lp), *[For(a, e, EMPTY) for a, e in loops]])
            cond = binop("lt", values[v], hi)
            if not prove(cond, rng):
                guards.append(cond)
        for iv in blk.iter_vars:
            if iv.kind == "reduce":
                rv_ = Var(names.fresh(f"{iv.var.name}_r"))
                loops.append((rv_, iv.dom.extent))
                values[iv.var] = simplify(iv.dom.min + rv_)
        guards = [*(extra_guards or []), *guards]
        pred: Expr = TRUE
        for g in guards:
            pred = g if pred == TRUE else logical_and(pred, g)
        new_br = BlockRealize(tuple(values[iv.var] for iv in blk.iter_vars), pred, blk)
        nest: Stmt = new_br
        for ax, ext in reversed(loops):
            nest = For(ax, ext, nest)
        kids = children(root_body(self._func))
        del kids[pos]
        body = make_seq(kids)

        def put(s: Stmt) -> Stmt | None:
            if isinstance(s, For) and s.var == lp.var:
                parts = [s.body, nest] if at_end else [nest, s.body]
                return dataclasses.replace(s, body=make_seq(parts))
            return None

        self._func = with_root(self._func, map_stmt(body, put))

    def _loop_chain(self, lp: For) -> list[For]:
        found = find_loop(self._func, lp.var.name)
        assert found is not None
        return [*found[1], found[0]]

    def reverse_compute_at(self, block: RV, loop: RV) -> None:
        """Move a consumer under a loop of its producer, computing the region produced there.

        Needs a spatial block that reads the producer's buffer at exactly its iter vars, and a
        loop that does not iterate the producer's reduction (its values would not be final).
        """
        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            lp, lp_anc = self._loop(loop)
            if any(iv.kind == "reduce" for iv in blk.iter_vars):
                raise ScheduleError(
                    f"reverse_compute_at needs a spatial block; {blk.name!r} has a reduction"
                )
            store = store_of(blk)
            if store is None:
                raise ScheduleError(f"block {blk.name!r} is not a single store")
            pos, _ = self._root_nest_of(blk.name, "reverse_compute_at")
            target_pos = top_index(self._func, lambda n: isinstance(n, For) and n.var == lp.var)
            if target_pos >= pos:
                raise ScheduleError(
                    f"loop {lp.var.name} does not run before block {blk.name!r}; "
                    "reverse_compute_at only "
                    "moves a consumer earlier"
                )
            producers_under = [
                n
                for n in walk(lp)
                if isinstance(n, BlockRealize) and writes_of(n.block) & reads_of(blk)
            ]
            if not producers_under:
                raise ScheduleError(f"loop {lp.var.name} holds no producer of block {blk.name!r}")
            chain_vars = {a.var for a in lp_anc} | {lp.var}
            for p in producers_under:
                if reduce_loop_vars(p) & chain_vars:
                    raise ScheduleError(
                        f"loop {lp.var.name} (or one above it) iterates the reduction of block "
                        f"{p.block.name!r}; its values are not final inside that loop"
                    )
            kids = children(root_body(self._func))
            for k in range(target_pos + 1, pos):
                for n in walk(kids[k]):
                    if isinstance(n, Block) and writes_of(n) & reads_of(blk):
                        raise ScheduleError(
                            f"block {n.name!r} writes a buffer {blk.name!r} reads after "
                            f"loop {lp.var.name}; "
                            "moving it earlier would read values before they exist"
                        )
            buf = next(iter(writes_of(producers_under[0].block) & reads_of(blk)))
            loads = [n for n in walk(blk.body) if isinstance(n, BufferLoad) and n.buffer == buf]
            idx = loads[0].indices
            if any(ld.indices != idx for ld in loads) or not is_identity_write(blk, idx):
                raise ScheduleError(
                    f"reverse_compute_at needs block {blk.name!r} to read {buf.name} at "
                    "exactly its iter vars"
                )
            per_dim: list[list[Expr]] = [[] for _ in buf.shape]
            for p in producers_under:
                mapping = {
                    iv.var: v for iv, v in zip(p.block.iter_vars, p.iter_values, strict=True)
                }
                for st in walk(p.block.body):
                    if isinstance(st, BufferStore) and st.buffer == buf:
                        for d, ix in enumerate(st.indices):
                            per_dim[d].append(simplify(substitute(ix, mapping)))
            extents = {n.var: simplify(n.extent) for n in walk(lp.body) if isinstance(n, For)}
            buf_windows = _exact_windows(per_dim, extents)
            if buf_windows is None:
                raise ScheduleError(
                    f"cannot prove that the part of {buf.name} written under loop {lp.var.name} "
                    "is a dense box (strided, fused or mixed indices); move the consumer to a "
                    "loop whose inner loops index the buffer directly"
                )
            # express windows per dim of the consumer's own store
            var_window = {v: buf_windows[d] for d, v in enumerate(idx)}
            windows = (
                [var_window[v] for v in store.indices]
                if is_identity_write(blk, store.indices)
                else None
            )
            if windows is None:
                raise ScheduleError(f"block {blk.name!r} must store at exactly its iter vars")
            guards = self._inherited_guards(producers_under, buf, per_dim, chain_vars)
            self._move_into(
                blk, br, store.buffer, windows, pos, lp, at_end=True, extra_guards=guards
            )
            self._record("reverse_compute_at", [block, loop], {}, [])

    def _inherited_guards(
        self,
        producers: list[BlockRealize],
        buf: Buffer,
        per_dim: list[list[Expr]],
        chain_vars: set[Var],
    ) -> list[Expr]:
        """Guards of the producers the moved consumer must share.

        A guard over the target loop and loops above it decides whether anything is produced
        in an iteration, so the consumer takes it too. A guard over inner loops must be the
        bound of a written dimension (`index < extent`), which the consumer's own bound check
        repeats; anything else cannot be expressed for the consumer and is refused.
        """
        out: list[Expr] = []
        for p in producers:
            for cond in conjuncts(p.predicate):
                if loop_vars_in(cond) <= chain_vars:
                    if cond not in out:
                        out.append(cond)
                    continue
                is_bound = (
                    isinstance(cond, BinOp)
                    and cond.op == "lt"
                    and any(
                        simplify(cond.a) in [simplify(i) for i in idxs]
                        and simplify(cond.b) == simplify(buf.shape[d])
                        for d, idxs in enumerate(per_dim)
                    )
                )
                if not is_bound:
                    raise ScheduleError(
                        f"block {p.block.name!r} is guarded by {cond}, which a consumer moved "
                        "under this loop could not repeat"
                    )
        return out

    def compute_inline(self, block: RV) -> None:
        """Inline a spatial block's expression into every reader of its buffer."""
        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            store = store_of(blk)
            if blk.init is not None or any(iv.kind == "reduce" for iv in blk.iter_vars):
                raise ScheduleError(f"cannot inline {blk.name!r}: it is a reduction")
            if store is None or not is_identity_write(blk, store.indices):
                raise ScheduleError(
                    f"cannot inline {blk.name!r}: it must store at exactly its spatial iter vars"
                )
            buf = store.buffer
            self._check_sole_writer(blk, buf, "compute_inline")
            if buf in self._func.params:
                raise ScheduleError(
                    f"cannot inline {blk.name!r}: it writes the function output {buf.name}"
                )
            if any(isinstance(n, BufferLoad) and n.buffer == buf for n in walk(store.value)):
                raise ScheduleError(f"cannot inline {blk.name!r}: it reads its own output")
            order = [b.block for b, _ in blocks(self._func)]
            start = next(i for i, b in enumerate(order) if b.name == blk.name)
            needs = reads_of(blk)
            for later in order[start + 1 :]:
                if buf in reads_of(later):
                    clobbered = [
                        b for b in order[start + 1 : order.index(later)] if writes_of(b) & needs
                    ]
                    if clobbered:
                        raise ScheduleError(
                            f"cannot inline {blk.name!r} into {later.name!r}: block "
                            f"{clobbered[0].name!r} writes a buffer it reads in between"
                        )

            def inline_load(n: Any) -> Any:
                if isinstance(n, BufferLoad) and n.buffer == buf:
                    return substitute(store.value, dict(zip(store.indices, n.indices, strict=True)))  # type: ignore[arg-type]
                return None

            def fix(s: Stmt) -> Stmt | None:
                if isinstance(s, BlockRealize):
                    if s.block.name == blk.name:
                        return EMPTY
                    if buf in reads_of(s.block):
                        nb = dataclasses.replace(
                            s.block,
                            body=rewrite(s.block.body, inline_load),
                            init=None
                            if s.block.init is None
                            else rewrite(s.block.init, inline_load),
                        )
                        return dataclasses.replace(s, block=with_regions(nb))
                return None

            body = map_stmt(root_body(self._func), fix)
            allocs = tuple(b for b in self._func.root.alloc_buffers if b != buf)
            self._func = with_root(self._func, body, allocs)
            self._record("compute_inline", [block], {}, [])

    def reverse_compute_inline(self, block: RV) -> None:
        """Fold a spatial consumer (an epilogue) into its single spatial producer."""
        with self._atomic():
            br, _ = self._block(block)
            blk = br.block
            store = store_of(blk)
            if (
                blk.init is not None
                or any(iv.kind == "reduce" for iv in blk.iter_vars)
                or store is None
            ):
                raise ScheduleError(
                    f"cannot reverse-inline {blk.name!r}: it must be a spatial single store"
                )
            allocs = self._func.root.alloc_buffers
            cands = [b for b in reads_of(blk) if b in allocs]
            producers = [
                (b, [p for p, _ in blocks(self._func) if b in writes_of(p.block)]) for b in cands
            ]
            producers = [(b, ps) for b, ps in producers if ps]
            if len(producers) != 1 or len(producers[0][1]) != 1:
                raise ScheduleError(
                    f"cannot reverse-inline {blk.name!r}: it must read exactly one "
                    "intermediate buffer with one producer"
                )
            buf, (pbr,) = producers[0]
            pblk = pbr.block
            pstore = store_of(pblk)
            if pblk.init is not None or any(iv.kind == "reduce" for iv in pblk.iter_vars):
                raise ScheduleError(
                    f"cannot reverse-inline {blk.name!r}: its producer {pblk.name!r} is a "
                    "reduction whose values "
                    "are not final until it finishes"
                )
            if pstore is None or not is_identity_write(pblk, pstore.indices):
                raise ScheduleError(
                    f"producer {pblk.name!r} must store at exactly its spatial iter vars"
                )
            others = [
                b.block.name
                for b, _ in blocks(self._func)
                if buf in reads_of(b.block) and b.block.name != blk.name
            ]
            if others:
                raise ScheduleError(
                    f"{buf.name} is also read by {', '.join(others)}; cannot fold {blk.name!r} away"
                )
            loads = [n for n in walk(store.value) if isinstance(n, BufferLoad) and n.buffer == buf]
            idx = loads[0].indices
            if any(ld.indices != idx for ld in loads) or not is_identity_write(blk, idx):
                raise ScheduleError(
                    f"block {blk.name!r} must read {buf.name} at exactly its iter vars"
                )
            ppos = top_index(
                self._func, lambda n: isinstance(n, BlockRealize) and n.block.name == pblk.name
            )
            cpos = top_index(
                self._func, lambda n: isinstance(n, BlockRealize) and n.block.name == blk.name
            )
            kids = children(root_body(self._func))
            other_reads = reads_of(blk) - {buf}
            for k in range(ppos + 1, cpos):
                for n in walk(kids[k]):
                    if isinstance(n, Block) and writes_of(n) & other_reads:
                        raise ScheduleError(
                            f"block {n.name!r} writes a buffer {blk.name!r} reads between "
                            "the two blocks"
                        )
            # consumer iter var at dim d of its load -> producer's index expression at dim d
            mapping = {v: pstore.indices[d] for d, v in enumerate(idx)}
            value = rewrite(
                store.value,
                lambda n: pstore.value if isinstance(n, BufferLoad) and n.buffer == buf else None,
            )
            new_store = BufferStore(
                store.buffer,
                tuple(substitute(i, mapping) for i in store.indices),
                substitute(value, mapping),
            )
            new_pblk = with_regions(dataclasses.replace(pblk, body=new_store))

            def fix(s: Stmt) -> Stmt | None:
                if isinstance(s, BlockRealize):
                    if s.block.name == blk.name:
                        return EMPTY
                    if s.block.name == pblk.name:
                        return dataclasses.replace(s, block=new_pblk)
                return None

            body = map_stmt(root_body(self._func), fix)
            self._func = with_root(self._func, body, tuple(b for b in allocs if b != buf))
            self._record("reverse_compute_inline", [block], {}, [])

    # ------------------------------------------------------------ reductions

    def decompose_reduction(self, block: RV, loop: RV) -> RV:
        """Pull a reduction's init out into its own block placed just before `loop`."""
        with self._atomic():
            br, loops = self._block(block)
            blk = br.block
            lp, lp_anc = self._loop(loop)
            if blk.init is None:
                raise ScheduleError(f"block {blk.name!r} has no init to decompose")
            if lp not in loops:
                raise ScheduleError(f"loop {lp.var.name} is not above block {blk.name!r}")
            red = reduce_loop_vars(br)
            if spatial_loop_vars(br) & red:
                raise ScheduleError(
                    f"block {blk.name!r} has loops shared by spatial and reduce iter vars"
                )
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
            names = self._names()
            copies = [
                (lp_, Var(names.fresh(f"{lp_.var.name}_init")))
                for lp_ in below
                if lp_.var not in red
            ]
            ren = {old.var: new for old, new in copies}
            kept_vars = {a.var for a in lp_anc} | set(ren)
            conds = conjuncts(br.predicate)
            init_conds = []
            for c in conds:
                vs = loop_vars_in(c)
                if vs & red and vs - red:
                    raise ScheduleError(
                        f"block {blk.name!r} has a guard mixing spatial and reduce loops: {c}"
                    )
                if not vs & red:
                    init_conds.append(substitute(c, ren))
            del kept_vars
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
                    inner = map_stmt(s, _block_replacer(blk.name, new_blk, skip_self=True))
                    return make_seq([nest, inner])
                return None

            body = map_stmt(root_body(self._func), fix)
            self._func = with_root(self._func, body)
            rv = self._new("b", init_blk.name)
            self._record("decompose_reduction", [block, loop], {}, [rv])
        return rv

    def rfactor(self, loop: RV, factor_axis: int) -> RV:
        """Factor a reduction over `loop` into partial results (an rf block) plus a final reduce.

        C[i] = sum_k A[i, k], k = k0*4 + k1, rfactor(k1, 0) ->
        C_rf[k1, i] = sum_k0 A[i, k0*4 + k1];  C[i] = sum_k1 C_rf[k1, i]
        """
        with self._atomic():
            lp, _ = self._loop(loop)
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
                raise ScheduleError(
                    f"block {blk.name!r} is not a reduction update C = C + e (or max, min)"
                )
            red_op, red_rhs = update
            if not is_identity_write(blk, store.indices):
                raise ScheduleError(
                    f"block {blk.name!r} must store at exactly its spatial iter vars"
                )
            red = reduce_loop_vars(br)
            if lp.var not in red:
                raise ScheduleError(
                    f"loop {lp.var.name} does not iterate the reduction of {blk.name!r}"
                )
            if lp.var in spatial_loop_vars(br):
                raise ScheduleError(
                    f"loop {lp.var.name} also drives a spatial iter var of {blk.name!r}"
                )
            if not 0 <= factor_axis <= len(acc.shape):
                raise ScheduleError(
                    f"factor_axis must be in [0, {len(acc.shape)}], got {factor_axis}"
                )
            pos, _ = self._root_nest_of(blk.name, "rfactor")
            _, loops = find_block(self._func, blk.name)  # type: ignore[misc]
            names = self._names()
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
            for cond in conjuncts(br.predicate):
                used = loop_vars_in(cond)
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
                val
                for iv, val in zip(blk.iter_vars, br.iter_values, strict=True)
                if iv.kind == "spatial"
            ]
            rf_values += [lp.var] + [x.var for x in red_loops]
            rf_pred: Expr = TRUE
            for cond in spatial_guards:
                rf_pred = cond if rf_pred == TRUE else logical_and(rf_pred, cond)
            rf_br = BlockRealize(tuple(rf_values), rf_pred, rf_blk)
            # write-back: C[i] = C[i] op C_rf[.., r, ..]
            wb_sp = [IterVar(Var(names.fresh(iv.var.name)), iv.dom, "spatial") for iv in spatial]
            wb_r = IterVar(
                Var(names.fresh(f"v_{lp.var.name}")), Range(const(0), simplify(lp.extent)), "reduce"
            )
            sp_map = {iv.var: n.var for iv, n in zip(spatial, wb_sp, strict=True)}
            wb_idx = tuple(substitute(i, sp_map) for i in store.indices)
            wb_rf_idx = list(wb_idx)
            wb_rf_idx.insert(factor_axis, wb_r.var)
            wb_store = BufferStore(
                acc,
                wb_idx,
                binop(red_op, BufferLoad(acc, wb_idx), BufferLoad(rf_buf, tuple(wb_rf_idx))),
            )
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
                tuple(
                    simplify(iv.dom.min + lv)
                    for iv, lv in zip([*wb_sp, wb_r], loop_vars, strict=True)
                ),
                TRUE,
                wb_blk,
            )
            for iv, lv in reversed(list(zip([*wb_sp, wb_r], loop_vars, strict=True))):
                wb_nest = For(lv, iv.dom.extent, wb_nest)
            body = map_stmt(
                root_body(self._func),
                lambda s: (
                    rf_br if isinstance(s, BlockRealize) and s.block.name == blk.name else None
                ),
            )
            kids = children(body)
            kids.insert(pos + 1, wb_nest)
            self._func = with_root(
                self._func, make_seq(kids), (*self._func.root.alloc_buffers, rf_buf)
            )
            rv = self._new("b", rf_blk.name)
            self._record("rfactor", [loop, factor_axis], {}, [rv])
        return rv

    # ------------------------------------------------------------ sampling

    def sample_perfect_tile(
        self,
        loop: RV,
        n: int,
        max_innermost_factor: int = 16,
        decision: Sequence[int] | None = None,
    ) -> list[RV]:
        """Sample `n` factors whose product is the loop's (constant) extent."""
        with self._atomic():
            lp, _ = self._loop(loop)
            ext = simplify(lp.extent)
            if not isinstance(ext, Const):
                raise ScheduleError(
                    f"sample_perfect_tile needs a constant extent; {lp.var.name} has {ext}"
                )
            extent = int(ext.value)
            if n < 1:
                raise ScheduleError("sample_perfect_tile needs n >= 1")
            if decision is None:
                decision = _sample_tile(self._rng, extent, n, max_innermost_factor)
            decision = [int(x) for x in decision]
            if (
                len(decision) != n
                or _product_int(decision) != extent
                or any(x < 1 for x in decision)
            ):
                raise ScheduleError(
                    f"tile decision {decision} does not split extent {extent} into {n} factors"
                )
            if decision[-1] > max_innermost_factor:
                raise ScheduleError(
                    f"innermost factor {decision[-1]} exceeds "
                    f"max_innermost_factor={max_innermost_factor}"
                )
            out = [self._new("v", x) for x in decision]
            self._record(
                "sample_perfect_tile",
                [loop],
                {"n": n, "max_innermost_factor": max_innermost_factor},
                out,
                list(decision),
            )
        return out

    def sample_categorical(
        self, candidates: Sequence[int], probs: Sequence[float], decision: int | None = None
    ) -> RV:
        """Pick one candidate integer with the given probabilities; the decision is its index."""
        with self._atomic():
            if len(candidates) != len(probs) or not candidates:
                raise ScheduleError(
                    "sample_categorical needs as many probabilities as candidates (at least one)"
                )
            if decision is None:
                decision = self._rng.choices(range(len(candidates)), weights=list(probs))[0]
            if not isinstance(decision, int) or not 0 <= decision < len(candidates):
                raise ScheduleError(
                    f"categorical decision {decision!r} is not an index into {list(candidates)}"
                )
            rv = self._new("v", int(candidates[decision]))
            self._record("sample_categorical", [list(candidates), list(probs)], {}, [rv], decision)
        return rv

    def sample_compute_location(self, block: RV, decision: int | None = None) -> RV:
        """Sample a loop of the block's first consumer to compute_at into (-1: stay at the root).

        The decision is an index into that consumer's loops; sampling only picks legal ones.
        """
        with self._atomic():
            br, _ = self._block(block)
            consumers = self._related(block, producers=False)
            loops: list[For] = []
            if consumers:
                found = find_block(self._func, consumers[0])
                assert found is not None
                loops = list(found[1])
            if decision is None:
                legal = [ROOT_LOCATION]
                for i, lp in enumerate(loops):
                    trial = self.copy()
                    try:
                        trial._compute_at_names(br.block.name, lp.var.name)
                        legal.append(i)
                    except ScheduleError:
                        pass
                decision = self._rng.choice(legal)
            if not isinstance(decision, int) or not ROOT_LOCATION <= decision < len(loops):
                raise ScheduleError(
                    f"compute-location decision {decision!r} is not -1 or a loop index "
                    f"below {len(loops)}"
                )
            rv = self._new("l", None if decision == ROOT_LOCATION else loops[decision].var.name)
            self._record("sample_compute_location", [block], {}, [rv], decision)
        return rv

    def _compute_at_names(self, block_name: str, loop_name: str) -> None:
        b = self._new("b", block_name)
        lp = self._new("l", loop_name)
        self.compute_at(b, lp)

    # ------------------------------------------------------------ helpers

    def _replace_loop(self, lp: For, new: Stmt) -> None:
        body = map_stmt(
            root_body(self._func), lambda s: new if isinstance(s, For) and s.var == lp.var else None
        )
        self._func = with_root(self._func, body)

    def _replace_block(self, name: str, new_block: Block) -> None:
        body = map_stmt(root_body(self._func), _block_replacer(name, new_block))
        self._func = with_root(self._func, body)


# ---------------------------------------------------------------- module helpers


SIMD_REDUCE_DTYPES = ("float32", "int32", "int64")


def _check_scope(scope: str) -> None:
    """Refuse a storage scope the lowering does not know."""
    if scope not in SCOPES:
        raise ScheduleError(f"unknown storage scope {scope!r}; known: {', '.join(SCOPES)}")


def _written_buffer(blk: Block, index: int) -> Buffer:
    """The `index`-th buffer `blk` writes; a ScheduleError naming the count when out of range."""
    writes = [w.buffer for w in blk.writes]
    if not 0 <= index < len(writes):
        raise ScheduleError(
            f"block {blk.name!r} writes {len(writes)} buffers; index {index} is out of range"
        )
    return writes[index]


def _simd_reduction(lp: For, br: BlockRealize) -> str | None:
    """None when a vectorized loop over a reduction can become an OpenMP simd reduction,
    else why not: the loop must hold just this block, with its init decomposed away, updating
    `C[idx] = C[idx] (+|max|min) e` in float32, int32 or int64."""
    if lp.body is not br and lp.body != br:
        return "and a vectorized reduction loop must hold only that block"
    blk = br.block
    if blk.init is not None:
        return "whose init runs inside it; decompose_reduction first"
    store = store_of(blk)
    if store is None or reduction_update(store) is None:
        return "which is not a C = C + e (or max, min) update"
    if store.buffer.dtype not in SIMD_REDUCE_DTYPES:
        return f"and a {store.buffer.dtype} accumulator cannot be a simd reduction"
    return None


def _loops(func: PrimFunc) -> list[tuple[For, tuple[For, ...]]]:
    from .schedule_tree import iter_nodes

    return [(n, lp) for n, lp in iter_nodes(root_body(func)) if isinstance(n, For)]


def _product(exts: Sequence[Expr]) -> Expr:
    out: Expr = const(1)
    for e in exts:
        out = out * e
    return out


def _product_int(xs: Sequence[int]) -> int:
    out = 1
    for x in xs:
        out *= x
    return out


def _substitute_realizes(
    body: Stmt,
    mapping: dict[Var, Expr],
    guard: Expr | None,
    ranges: dict[Var, tuple[int, int]] | None = None,
) -> Stmt:
    """Substitute loop variables in block bindings (and extents), adding `guard` to predicates."""

    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize):
            values = tuple(simplify(substitute(v, mapping), ranges) for v in s.iter_values)
            pred = substitute(s.predicate, mapping)
            if guard is not None:
                pred = guard if pred == TRUE else logical_and(pred, guard)
            return BlockRealize(values, pred, s.block)
        if isinstance(s, For):
            ext = substitute(s.extent, mapping)
            if ext is not s.extent:
                return dataclasses.replace(s, extent=ext, body=map_stmt(s.body, fix))
        return None

    return map_stmt(body, fix)


def _block_replacer(name: str, new_block: Block, skip_self: bool = False):
    def fix(s: Stmt) -> Stmt | None:
        if isinstance(s, BlockRealize) and s.block.name == name:
            return dataclasses.replace(s, block=new_block)
        return None

    return fix


def _replace_buffer(blk: Block, old: Buffer, new: Buffer, loads_only: bool) -> Block:
    def post(n: Any) -> Any:
        if isinstance(n, BufferLoad) and n.buffer == old:
            return BufferLoad(new, n.indices)
        if not loads_only and isinstance(n, BufferStore) and n.buffer == old:
            return BufferStore(new, n.indices, n.value)
        return None

    init = None if blk.init is None else rewrite(blk.init, post)
    return dataclasses.replace(blk, body=rewrite(blk.body, post), init=init)


def _copy_nest(names: NameSupply, block_name: str, src: Buffer, dst: Buffer) -> Stmt:
    """Loops over dst's shape with one block copying src to dst elementwise."""
    loop_vars = [Var(names.fresh(f"ax{d}")) for d in range(len(src.shape))]
    ivs = [
        IterVar(Var(names.fresh(f"v_ax{d}")), Range(const(0), e), "spatial")
        for d, e in enumerate(src.shape)
    ]
    idx = tuple(iv.var for iv in ivs)
    blk = with_regions(
        Block(block_name, tuple(ivs), (), (), BufferStore(dst, idx, BufferLoad(src, idx)))
    )
    nest: Stmt = BlockRealize(tuple(loop_vars), TRUE, blk)
    for lv, e in reversed(list(zip(loop_vars, src.shape, strict=True))):
        nest = For(lv, e, nest)
    return nest


def _windows(
    per_dim: list[list[Expr]], buf: Buffer, inner: dict[Var, tuple[int, int]], unbounded: set[Var]
) -> list[tuple[Expr, Expr]]:
    out = []
    ranges = dict(inner)
    for v in unbounded:
        ranges[v] = (0, -1)
    for d, idxs in enumerate(per_dim):
        if not idxs:
            out.append((const(0), buf.shape[d]))
            continue
        off, ext = dim_window(idxs, ranges)
        full = simplify(buf.shape[d])
        if off is None or (isinstance(full, Const) and ext >= int(full.value)):
            out.append((const(0), full))
        else:
            out.append((off, const(ext)))
    return out


def _exact_windows(
    per_dim: list[list[Expr]], extents: dict[Var, Expr]
) -> list[tuple[Expr, Expr]] | None:
    """Per dim (offset, extent) of exactly the set the indices cover as the inner loops run.

    Only mixed-radix linear indices qualify (coefficients 1, E1, E1*E2, ... of distinct inner
    loops), so the covered set is a dense interval; anything else gives None.
    """
    from .simplify import from_linear, linear

    out: list[tuple[Expr, Expr]] = []
    used: set[Var] = set()
    for idxs in per_dim:
        if not idxs or any(i != idxs[0] for i in idxs):
            return None
        terms, c = linear(idxs[0])
        outer = {t: k for t, k in terms.items() if not (loop_vars_in(t) & set(extents))}
        inner = [
            (k, t) for t, k in terms.items() if t not in outer and extents.get(t) != const(1)
        ]  # a loop of extent 1 only ever contributes 0
        for k, t in inner:
            if not isinstance(t, Var) or t not in extents or k <= 0 or t in used:
                return None
            used.add(t)
        size: Expr = const(1)
        for k, t in sorted(inner, key=lambda kt: (kt[0], kt[1].name)):
            if simplify(size - k) != const(0):
                return None
            size = simplify(size * extents[t])
        out.append((simplify(from_linear(outer, c)), size))
    return out


def _sample_tile(rng: random.Random, extent: int, n: int, max_inner: int) -> list[int]:
    """Random factorisation of `extent` into n factors, innermost <= max_inner."""
    divisors = [d for d in range(1, min(extent, max_inner) + 1) if extent % d == 0]
    inner = rng.choice(divisors)
    rest = extent // inner
    factors = []
    for _ in range(n - 2):
        ds = [d for d in range(1, rest + 1) if rest % d == 0]
        f = rng.choice(ds)
        factors.append(f)
        rest //= f
    if n == 1:
        return [extent]
    return [rest, *factors, inner]


__all__ = ["LOOP_KINDS", "ROOT_LOCATION", "Schedule", "ScheduleError"]
