"""Launch dimensions of a lowered GPU kernel: grid and block from its thread-bound loops.

Each thread axis is launched at the largest extent any loop bound to it has; a loop with a
smaller extent is guarded in the kernel. Extents over symbolic dims become expressions in the
workers' launch syntax (`+ - * // %`, `ceildiv`, `min`, `max` over dim names), evaluated at
launch time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CodegenError
from .expr import BinOp, Const, Expr, Var
from .simplify import simplify
from .stmt import For, PrimFunc
from .visit import walk

GRID_TAGS = ("blockIdx.x", "blockIdx.y", "blockIdx.z")
CLUSTER_TAG = "clusterIdx.x"  # a block's rank in its cluster of consecutive blockIdx.x
MAX_CLUSTER = 8  # the portable cluster size
BLOCK_TAGS = ("threadIdx.x", "threadIdx.y", "threadIdx.z")
MAX_THREADS = 1024

_INFIX = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//", "floormod": "%"}


def launch_text(e: Expr) -> str:
    """`e` in the launch-expression syntax the workers evaluate (no C casts or helpers)."""
    if isinstance(e, Const):
        return str(int(e.value))
    if isinstance(e, Var):
        return e.name
    if isinstance(e, BinOp) and e.op in _INFIX:
        return f"({launch_text(e.a)} {_INFIX[e.op]} {launch_text(e.b)})"
    if isinstance(e, BinOp) and e.op in ("min", "max"):
        return f"{e.op}({launch_text(e.a)}, {launch_text(e.b)})"
    raise CodegenError(f"launch extent {e} cannot be evaluated at launch time")


@dataclass(frozen=True)
class LaunchDims:
    """Per thread axis, the launched extent (an int or a launch expression)."""

    extents: tuple[tuple[str, int | str], ...]

    def get(self, tag: str) -> int | str:
        return dict(self.extents).get(tag, 1)

    @property
    def cluster(self) -> int:
        """Blocks per thread-block cluster along x (1: no clusters)."""
        return int(self.get(CLUSTER_TAG))

    @property
    def grid(self) -> tuple[int | str, ...]:
        """Blocks launched per axis; along x, every cluster's blocks."""
        x, c = self.get("blockIdx.x"), self.cluster
        if c > 1:
            x = x * c if isinstance(x, int) else f"({x} * {c})"
        return (x, *(self.get(t) for t in GRID_TAGS[1:]))

    @property
    def block(self) -> tuple[int | str, ...]:
        return tuple(self.get(t) for t in BLOCK_TAGS)

    def used(self, tag: str) -> bool:
        """Whether the axis is launched with possibly more than one index."""
        return self.get(tag) != 1


def launch_dims(lowered: PrimFunc) -> LaunchDims:
    """The launch extent of every thread axis the lowered function binds."""
    found: dict[str, list[Expr]] = {}
    for n in walk(lowered.body):
        if isinstance(n, For) and n.kind == "thread_binding" and n.thread != "vthread":
            found.setdefault(n.thread or "", []).append(simplify(n.extent))
    out: list[tuple[str, int | str]] = []
    threads = 1
    for tag in (*GRID_TAGS, CLUSTER_TAG, *BLOCK_TAGS):
        exts = found.get(tag)
        if not exts:
            continue
        consts = [int(e.value) for e in exts if isinstance(e, Const)]
        texts = sorted({launch_text(e) for e in exts if not isinstance(e, Const)})
        value: int | str
        if not texts:
            value = max(consts)
        elif tag in BLOCK_TAGS or tag == CLUSTER_TAG:
            raise CodegenError(
                f"{tag} is bound to a symbolic extent {texts[0]}; split it by a constant"
            )
        else:
            parts = texts + ([str(max(consts))] if consts else [])
            value = parts[0]
            for p in parts[1:]:
                value = f"max({value}, {p})"
        if tag in BLOCK_TAGS:
            threads *= int(value)
        out.append((tag, value))
    cluster = dict(out).get(CLUSTER_TAG, 1)
    if not isinstance(cluster, int) or cluster > MAX_CLUSTER:
        raise CodegenError(
            f"{CLUSTER_TAG} is launched with {cluster} blocks per cluster; at most {MAX_CLUSTER}"
        )
    if threads > MAX_THREADS:
        raise CodegenError(f"{threads} threads per block; CUDA allows at most {MAX_THREADS}")
    return LaunchDims(tuple(out))
