"""ScheduleState: the PrimFunc being scheduled, what its handles name, and the sampler's RNG.

The primitive families (`prim_*.py`) read and replace `state.func` through the methods here;
`Schedule` wraps each call so that it is atomic and recorded.
"""

from __future__ import annotations

import random
from typing import Any

from .errors import ScheduleError
from .expr import Buffer
from .schedule_tree import (
    all_names,
    block_replacer,
    blocks,
    children,
    find_block,
    find_loop,
    map_stmt,
    reads_of,
    root_body,
    top_index,
    with_root,
    writes_of,
)
from .stmt import Block, BlockRealize, For, PrimFunc, Stmt
from .tensor_expr import NameSupply
from .trace import RV
from .visit import walk


class ScheduleState:
    """A PrimFunc plus handle values: a block handle maps to its block's name, a loop handle to
    its loop variable's name (None for the root location), an integer handle to its value."""

    def __init__(self, func: PrimFunc, seed: int | None = None):
        self.func = func
        self.values: dict[RV, Any] = {}
        self.next_id = 0
        self.rng = random.Random(seed)

    def copy(self) -> ScheduleState:
        """An independent state with the same function, handles and RNG position."""
        other = ScheduleState(self.func)
        other.values = dict(self.values)
        other.next_id = self.next_id
        other.rng.setstate(self.rng.getstate())
        return other

    def new(self, kind: str, value: Any) -> RV:
        """A fresh handle of `kind` ("b", "l" or "v") naming `value`."""
        rv = RV(kind, self.next_id)
        self.next_id += 1
        self.values[rv] = value
        return rv

    def block(self, rv: Any) -> tuple[BlockRealize, tuple[For, ...]]:
        """The block a handle names and the loops above it."""
        if not isinstance(rv, RV) or rv.kind != "b" or rv not in self.values:
            raise ScheduleError(f"{rv!r} is not a block handle of this schedule")
        found = find_block(self.func, self.values[rv])
        if found is None:
            raise ScheduleError(
                f"block {self.values[rv]!r} no longer exists (it was inlined or removed)"
            )
        return found

    def loop(self, rv: Any) -> tuple[For, tuple[For, ...]]:
        """The loop a handle names and the loops above it."""
        if not isinstance(rv, RV) or rv.kind != "l" or rv not in self.values:
            raise ScheduleError(f"{rv!r} is not a loop handle of this schedule")
        name = self.values[rv]
        if name is None:
            raise ScheduleError("the root location is not a loop")
        found = find_loop(self.func, name)
        if found is None:
            raise ScheduleError(f"loop {name!r} no longer exists (it was split, fused or removed)")
        return found

    def value(self, rv: Any) -> int:
        """The integer an integer handle holds; a literal passes through unchanged."""
        if isinstance(rv, RV):
            if rv.kind != "v" or rv not in self.values:
                raise ScheduleError(f"{rv!r} is not an integer handle of this schedule")
            return int(self.values[rv])
        return rv

    def is_root_location(self, rv: Any) -> bool:
        """Whether `rv` is a loop handle for "stay at the root" (sample_compute_location's -1)."""
        return isinstance(rv, RV) and rv.kind == "l" and self.values.get(rv, "") is None

    def names(self) -> NameSupply:
        """A supply of names not yet used in the function."""
        return NameSupply(sorted(all_names(self.func)))

    def replace_loop(self, lp: For, new: Stmt) -> None:
        """Put `new` where the loop `lp` is."""
        body = map_stmt(
            root_body(self.func), lambda s: new if isinstance(s, For) and s.var == lp.var else None
        )
        self.func = with_root(self.func, body)

    def replace_block(self, name: str, new_block: Block) -> None:
        """Put `new_block` in place of the block called `name` (its realize stays)."""
        body = map_stmt(root_body(self.func), block_replacer(name, new_block))
        self.func = with_root(self.func, body)

    def related(self, block: RV, producers: bool) -> list[str]:
        """Names of the blocks writing what `block` reads (producers) or reading what it writes."""
        br, _ = self.block(block)
        mine = br.block
        out = []
        for other, _ in blocks(self.func):
            if other.block.name == mine.name:
                continue
            if producers and writes_of(other.block) & reads_of(mine):
                out.append(other.block.name)
            if not producers and reads_of(other.block) & writes_of(mine):
                out.append(other.block.name)
        return out

    def check_sole_writer(self, blk: Block, buf: Buffer, what: str) -> None:
        """Refuse `what` when a block other than `blk` also writes `buf`."""
        others = [
            b.block.name
            for b, _ in blocks(self.func)
            if b.block.name != blk.name and buf in writes_of(b.block)
        ]
        if others:
            raise ScheduleError(
                f"{what} needs block {blk.name!r} to be the only writer of {buf.name}, but "
                f"{', '.join(others)} also write it (apply {what} before decompose_reduction)"
            )

    def root_nest_of(self, name: str, what: str) -> tuple[int, Stmt]:
        """Position and statement of the root-level nest holding block `name`, which must hold
        nothing else."""
        pos = top_index(self.func, lambda n: isinstance(n, BlockRealize) and n.block.name == name)
        nest = children(root_body(self.func))[pos]
        inner = [n.block.name for n in walk(nest) if isinstance(n, BlockRealize)]
        if inner != [name]:
            raise ScheduleError(
                f"{what} needs block {name!r} alone in its own loop nest at the root, but "
                "that nest also "
                f"holds {', '.join(b for b in inner if b != name)}"
            )
        return pos, nest
