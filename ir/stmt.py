"""Statement nodes: loops, blocks, stores and the PrimFunc that holds them.

A PrimFunc body is a root BlockRealize whose block allocates the intermediate buffers; its body
is a sequence of loop nests ending in compute blocks (TensorIR style). A block declares its
iteration domain (spatial and reduce iter vars), what it reads and writes, an optional `init`
for reductions and its own allocations; a BlockRealize binds the iter vars to loop expressions
under a predicate (guards for imperfect splits). Lowering turns blocks into plain loops with
IfThenElse and Allocate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .expr import Buffer, Const, Expr, Var, node

LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled", "thread_binding")
THREAD_TAGS = (
    "blockIdx.x",
    "blockIdx.y",
    "blockIdx.z",
    "clusterIdx.x",
    "threadIdx.x",
    "threadIdx.y",
    "threadIdx.z",
    "vthread",
)
ITER_KINDS = ("spatial", "reduce")

Annotations = tuple[tuple[str, Any], ...]


class Stmt:
    """Base of statement nodes."""

    def __str__(self) -> str:
        from .printer import stmt_str

        return stmt_str(self)


@node
@dataclass(frozen=True)
class Range:
    """The half-open interval [min, min + extent)."""

    min: Expr
    extent: Expr


@node
@dataclass(frozen=True)
class IterVar:
    """A block iteration variable over `dom`, either "spatial" or "reduce"."""

    var: Var
    dom: Range
    kind: str = "spatial"


@node
@dataclass(frozen=True)
class BufferRegion:
    """The part of a buffer a block touches, one Range per dimension."""

    buffer: Buffer
    region: tuple[Range, ...]


@node
@dataclass(frozen=True)
class BufferStore(Stmt):
    """Write `value` to one element of `buffer`."""

    buffer: Buffer
    indices: tuple[Expr, ...]
    value: Expr


@node
@dataclass(frozen=True)
class SeqStmt(Stmt):
    """Statements run in order."""

    stmts: tuple[Stmt, ...]


@node
@dataclass(frozen=True)
class For(Stmt):
    """`for var in range(extent)` of a kind in LOOP_KINDS; thread-bound loops name their tag."""

    var: Var
    extent: Expr
    body: Stmt
    kind: str = "serial"
    thread: str | None = None
    annotations: Annotations = ()


@node
@dataclass(frozen=True)
class IfThenElse(Stmt):
    """A guarded statement (made by lowering predicates and inits)."""

    cond: Expr
    then_case: Stmt
    else_case: Stmt | None = None


@node
@dataclass(frozen=True)
class Allocate(Stmt):
    """Storage for `buffer` live during `body` (made by lowering)."""

    buffer: Buffer
    body: Stmt


@node
@dataclass(frozen=True)
class PipelineSync(Stmt):
    """A step of an asynchronous-copy pipeline (made by lowering a software-pipelined loop).

    `op` "commit" closes the group of asynchronous copies this thread issued since the last
    commit; "wait" blocks until at most `pending` of its groups are still in flight and then
    synchronises the thread block, so every thread sees every completed copy.
    """

    op: str  # "commit" | "wait"
    pending: int = 0


@node
@dataclass(frozen=True)
class SingleThread(Stmt):
    """`body`, one store, run only by thread 0 of each axis in `threads` (made by
    pass_predicate for a store outside the loops bound to those launched thread axes)."""

    threads: tuple[str, ...]
    body: Stmt


@node
@dataclass(frozen=True)
class SyncThreads(Stmt):
    """A barrier of the thread block (made by pass_thread_sync between statements that
    write shared memory and later ones that touch it); with `cluster`, of every thread of
    the thread-block cluster (around `shared.cluster` buffers)."""

    cluster: bool = False


@node
@dataclass(frozen=True)
class ThreadAllReduce(Stmt):
    """Combine each element of `buffer` across the threads of `thread` (made by lowering
    for GPU targets; more than one element where a thread reduces a few rows at once).

    Every thread of the axis must execute it; afterwards each holds `op` over all of them.
    `extent` is the number of threads taking part (the bound loop's extent).
    """

    buffer: Buffer
    op: str  # "add" | "max" | "min"
    thread: str
    extent: int


@node
@dataclass(frozen=True)
class Block(Stmt):
    """A unit of computation with its own iteration domain (see module docstring)."""

    name: str
    iter_vars: tuple[IterVar, ...]
    reads: tuple[BufferRegion, ...]
    writes: tuple[BufferRegion, ...]
    body: Stmt
    init: Stmt | None = None
    alloc_buffers: tuple[Buffer, ...] = ()
    annotations: Annotations = ()


@node
@dataclass(frozen=True)
class BlockRealize(Stmt):
    """A block instance: iter var bindings (loop expressions) and a predicate guard."""

    iter_values: tuple[Expr, ...]
    predicate: Expr
    block: Block


TRUE = Const(True, "bool")


@node
@dataclass(frozen=True)
class PrimFunc:
    """A tensor program: buffer parameters (inputs first, outputs last) and a root block."""

    name: str
    params: tuple[Buffer, ...]
    body: BlockRealize
    num_inputs: int
    attrs: Annotations = ()

    @property
    def inputs(self) -> tuple[Buffer, ...]:
        """The input buffers, in call order."""
        return self.params[: self.num_inputs]

    @property
    def outputs(self) -> tuple[Buffer, ...]:
        """The output buffers, in call order."""
        return self.params[self.num_inputs :]

    @property
    def root(self) -> Block:
        """The root block."""
        return self.body.block

    @property
    def shape_vars(self) -> tuple[Var, ...]:
        """Symbolic dims appearing in parameter shapes, in order of first appearance."""
        from .visit import free_vars

        seen: dict[Var, None] = {}
        for buf in self.params:
            for dim in buf.shape:
                for v in free_vars(dim):
                    seen.setdefault(v, None)
        return tuple(seen)

    def to_json(self) -> str:
        """JSON text that `from_json` turns back into an equal PrimFunc."""
        from .serialize import to_json

        return to_json(self)

    @staticmethod
    def from_json(text: str) -> PrimFunc:
        """Parse JSON written by `to_json`."""
        from .serialize import from_json

        func = from_json(text)
        if not isinstance(func, PrimFunc):
            raise ValueError("JSON does not hold a PrimFunc")
        return func

    def script(self) -> str:
        """The readable text form."""
        from .printer import func_str

        return func_str(self)

    def __str__(self) -> str:
        return self.script()
