"""What rules need to know about a block: its loops by kind, constant extents, outputs."""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import Const
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import blocks, find_block, reduce_loop_vars, writes_of
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import RV


@dataclass(frozen=True)
class LoopInfo:
    """One loop above a block: its handle, constant extent (None if symbolic) and kind."""

    rv: RV
    extent: int | None
    reduce: bool


def loop_infos(sch: Schedule, block: RV) -> list[LoopInfo]:
    """The loops above `block`, outermost first, each marked spatial or reduction."""
    found = find_block(sch.func, sch.get(block).name)
    if found is None:
        raise ScheduleError(f"block {block.name} is not in the schedule")
    red = reduce_loop_vars(found[0])
    out = []
    for lp in sch.get_loops(block):
        node = sch.get(lp)
        ext = int(node.extent.value) if isinstance(node.extent, Const) else None
        out.append(LoopInfo(lp, ext, node.var in red))
    return out


def is_reduction(func: PrimFunc, block: str) -> bool:
    """True if the block has a reduce iter var (and so an init)."""
    found = find_block(func, block)
    return found is not None and any(iv.kind == "reduce" for iv in found[0].block.iter_vars)


def writes_output(func: PrimFunc, block: str) -> bool:
    """True if the block writes one of the function's output parameters."""
    found = find_block(func, block)
    return found is not None and bool(writes_of(found[0].block) & set(func.outputs))


@dataclass(frozen=True)
class ReducedOutput:
    """A block that writes a function output from reductions, seen in a probe copy."""

    probe: Schedule  # a copy of the schedule, free to inspect
    out: RV  # the output block in the probe
    producers: list[RV]  # its producers in the probe, every one a reduction


def reduced_output(sch: Schedule, block: str) -> ReducedOutput | None:
    """The output block `block` and its producers if it is not itself a reduction, writes an
    output of the function and all its (one or more) producers reduce; None otherwise."""
    if is_reduction(sch.func, block) or not writes_output(sch.func, block):
        return None
    probe = sch.copy()
    out = probe.get_block(block)
    producers = probe.get_producers(out)
    if not producers or not all(is_reduction(probe.func, probe.get(p).name) for p in producers):
        return None
    return ReducedOutput(probe, out, producers)


def divisors_among(extent: int | None, candidates: tuple[int, ...]) -> list[int]:
    """The candidates that divide `extent` (none for a symbolic extent)."""
    if extent is None:
        return []
    return [c for c in candidates if c <= extent and extent % c == 0]


def uniform(n: int) -> list[float]:
    """Equal probabilities for n categorical candidates."""
    return [1.0 / n] * n


def nest_blocks(func: PrimFunc) -> list[str]:
    """The first block of each top-level loop nest of `func`, in program order: one handle
    per nest for the global rules that treat whole nests (parallel loops, unrolling)."""
    seen: set[str] = set()
    out = []
    for br, loops in blocks(func):
        if loops and loops[0].var.name not in seen:
            seen.add(loops[0].var.name)
            out.append(br.block.name)
    return out
