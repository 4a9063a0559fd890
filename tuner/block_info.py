"""What rules need to know about a block: its loops by kind, constant extents, outputs."""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.expr import Const
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import blocks, find_block, reduce_loop_vars, writes_of
from tunefleet.ir.stmt import PrimFunc
from tunefleet.ir.trace import RV
from tunefleet.ir.visit import free_vars


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


@dataclass(frozen=True)
class PairedOutput:
    """A reduction whose single consumer writes a function output and may read it at several
    points (an epilogue pairing columns, e.g. rope's halves or gate|up), seen in a probe.

    `pair_axes` are the reduction's spatial axes that one output element reads whole (the
    consumer's read region spans them); `pair_loops` are the consumer's loops (positions)
    that index no axis of the reduction: they pick within a pair. Both are empty for a
    plain elementwise consumer.
    """

    probe: Schedule
    acc: RV
    out: RV
    pair_axes: tuple[int, ...]
    pair_loops: tuple[int, ...]


def paired_output(sch: Schedule, block: str) -> PairedOutput | None:
    """`block` as a reduction feeding one unscheduled output block, or None.

    Before (rope on a q|k|v dense laid out [t, heads, 2, d/2]): `qkv_rope[i, hh, p, j]`
    reads `dense_acc[i, hh, 0:2, j]`; here pair_axes = (2,), pair_loops = (2,) (loop p).
    """
    if not is_reduction(sch.func, block):
        return None
    probe = sch.copy()
    acc = probe.get_block(block)
    consumers = probe.get_consumers(acc)
    if len(consumers) != 1:
        return None
    out = consumers[0]
    name = probe.get(out).name
    if is_reduction(probe.func, name) or not writes_output(probe.func, name):
        return None
    if any(probe.get(lp).kind != "serial" for lp in probe.get_loops(out)):
        return None
    acc_buf = probe.get(acc).writes[0].buffer
    regions = [r for r in probe.get(out).reads if r.buffer == acc_buf]
    if len(regions) != 1:
        return None
    axes = tuple(i for i, rg in enumerate(regions[0].region)
                 if not (isinstance(rg.extent, Const) and int(rg.extent.value) == 1))  # fmt: skip
    return PairedOutput(probe, acc, out, axes, pick_loops(probe, out, acc_buf.name))


def pick_loops(sch: Schedule, out: RV, acc: str) -> tuple[int, ...]:
    """The positions of `out`'s loops (longer than 1) that index no point of buffer `acc`
    that `out` reads: they pick within a pair. Asked again after a primitive rebuilds the
    nest (reverse_compute_at lays its loops out in the order of the output's dims)."""
    found = find_block(sch.func, sch.get(out).name)
    assert found is not None
    br = found[0]
    used = {v for r in br.block.reads if r.buffer.name == acc
            for rg in r.region for v in free_vars(rg.min)}  # fmt: skip
    bound = {iv.var: val for iv, val in zip(br.block.iter_vars, br.iter_values, strict=True)}
    return tuple(
        n for n, lp in enumerate(sch.get_loops(out))
        if not any(sch.get(lp).var in free_vars(bound[v]) for v in used if v in bound)
        and loop_extent(sch, lp) != 1
    )  # fmt: skip


def loop_extent(sch: Schedule, loop: RV) -> int | None:
    """A loop's constant extent (None if symbolic)."""
    ext = sch.get(loop).extent
    return int(ext.value) if isinstance(ext, Const) else None


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
