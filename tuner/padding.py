"""Padding a CPU reduction to its tiles: how far to pad an extent, and the padded block's
output kept as the local accumulator (what the packed dense and multi-level tilings share)."""

from __future__ import annotations

from tunefleet.ir.expr import BufferLoad
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.trace import RV
from tunefleet.ir.visit import walk

PAD_WASTE = 1 / 64  # the most padding (a fraction of the extent) taken for a larger tile


def padding(extent: int, tiles: tuple[int, ...]) -> int:
    """How far to pad `extent` for the largest tile that costs at most PAD_WASTE of it
    (333 rows: 3, for tiles of 8; 777 columns: 7, for panels of 16); where none is that
    cheap, the least padding any tile needs (ties to the larger tile)."""
    cheap = [t for t in tiles if -extent % t <= extent * PAD_WASTE]
    if cheap:
        return -extent % max(cheap)
    return min(-extent % t for t in tiles)


def pad_accumulator(t: Schedule, b: RV, counts: list[int]) -> tuple[RV, list[RV]]:
    """Pad block `b` by `counts` (pad_spatial, one per iter var), make its padded output the
    local accumulator, and read in place every input its last spatial var (the vector
    loop's) does not index; returns the write-back block and the copies kept (the inputs
    read along the vector loop, whose padded copy keeps its lanes contiguous)."""
    *copies, write_back = t.pad_spatial(b, counts)
    blk = t.get(b)
    lanes = [iv.var for iv in blk.iter_vars if iv.kind == "spatial"][-1]
    kept = []
    for copy in copies:
        padded = t.get(copy).writes[0].buffer
        loads = [n for n in walk(blk.body) if isinstance(n, BufferLoad) and n.buffer == padded]
        if any(lanes in walk(ld.indices) for ld in loads):
            kept.append(copy)
        else:
            t.compute_inline(copy)
    t.set_scope(b, 0, "local")
    return write_back, kept
