"""Packed dense: the CPU GEMM micro-kernel for `out[i, j] = sum_k x[i, k] * w[j, k]` (and a
matmul's `a[i, k] * b[k, j]`).

Both operands of a dense layer are k-contiguous, so without a copy a vector can only run
along k (split-K lanes) or gather along j. This sketch copies w once per call into a packed
buffer `wp[j // NB, k, j % NB]` (`cache_read` + `transform_layout`), so that NB consecutive
output columns are contiguous for every k, and tiles the block as

    for j0 in n // NB:  for j1 in NB: for k:  wp[j0, k, j1] = w[j0*NB + j1, k]   # packing
    for i0, j0:                               # parallel (parallel_outer)
      for i1, j1:                             # cache block: IB x JB register tiles
        acc[R, NB] = 0
        for k:                                # the whole k: acc stays in registers
          for i2 in R (unrolled):
            for j2 in NB (vectorized):  acc[i2, j2] += x[i, k] * wp[j0', k, j2]
        out[i, j] = acc                       # written back once per register tile

Decisions: NB (8-64 floats: one to four zmm), R (2-8 rows), and the cache-block sizes IB
and JB (1-16 tiles). All are `sample_categorical` over values that keep every split
perfect, so the loop structure is the same for every decision.

Shapes as they come: where a wider panel or a taller tile fits after padding at most 1/64
of the extent (777 columns: 784, panels of 16; 333 rows: 336, tiles of 8), the block is
first padded (`pad_spatial`). The padded weight copy is the packed buffer itself, so
padding costs no extra pass over w, and x is read in place at a clamped row. The
accumulator tile is then the padded output itself (in registers) and its write-back stores
the valid part. The rule applies to blocks with two spatial loops and one reduction loop,
reading a buffer at exactly `[j, k]` or `[k, j]` (a matmul's b: its rows are j-contiguous
already, but a panel keeps the NB columns of every k in one run of memory, as a BLAS packs
them); it leaves the other CPU sketches in place (non-exclusive).
"""

from __future__ import annotations

from dataclasses import dataclass

from tunefleet.ir.expr import BufferLoad, Var
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.schedule_tree import find_block, read_only_buffers, store_of
from tunefleet.ir.trace import RV
from tunefleet.ir.visit import walk

from .block_info import divisors_among, is_reduction, loop_infos, uniform
from .padding import pad_accumulator, padding
from .space import ScheduleRule, SpaceContext, try_fork

PANEL_WIDTHS = (8, 16, 32, 64)  # NB: packed columns per k, the vector width of the tile
TILE_ROWS = (2, 4, 8)  # R: rows of x per register tile
BLOCK_TILES = (1, 2, 4, 8, 16)  # IB, JB: register tiles per cache block along i and j


@dataclass(frozen=True)
class DenseShape:
    """Where a dense-like block keeps its axes: loop positions and the packed read."""

    i_loop: int
    j_loop: int
    k_loop: int
    weight_index: int  # index among the block's read-only buffers (cache_read's numbering)
    m: int
    n: int
    i_iter: int = 0  # positions of i and j among the block's iter vars (pad_spatial's order)
    j_iter: int = 1
    weight: str = ""  # the weight buffer's name
    k_major: bool = False  # the weight is read at [k, j] (matmul's b), not [j, k]


def dense_shape(sch: Schedule, block: str) -> DenseShape | None:
    """The axes of `block` if it computes `out[i, j] += f(..., w[j, k], ...)` over three
    loops (i, j spatial, k reduce, each bound to one iter var); None otherwise."""
    found = find_block(sch.func, block)
    if found is None:
        return None
    br = found[0]
    blk = br.block
    spatial = [iv.var for iv in blk.iter_vars if iv.kind == "spatial"]
    reduce = [iv.var for iv in blk.iter_vars if iv.kind == "reduce"]
    store = store_of(blk)
    if len(spatial) != 2 or len(reduce) != 1 or store is None or len(blk.writes) != 1:
        return None
    if tuple(store.indices) != tuple(spatial):
        return None
    vi, vj = spatial
    (vk,) = reduce
    probe = sch.copy()
    infos = loop_infos(probe, probe.get_block(block))
    if len(infos) != 3 or any(i.extent is None for i in infos):
        return None
    loop_vars = [probe.get(i.rv).var for i in infos]
    binding = dict(zip((iv.var for iv in blk.iter_vars), br.iter_values, strict=True))
    pos: dict[Var, int] = {}
    for v in (vi, vj, vk):
        if binding[v] not in loop_vars:
            return None
        pos[v] = loop_vars.index(binding[v])
    reads = read_only_buffers(blk)
    loads = [n for n in walk(blk.body) if isinstance(n, BufferLoad)]
    for idx, buf in enumerate(reads):
        mine = [ld.indices for ld in loads if ld.buffer == buf]
        layouts = {tuple(ix) for ix in mine}
        if layouts in ({(vj, vk)}, {(vk, vj)}):
            m, n = infos[pos[vi]].extent, infos[pos[vj]].extent
            assert m is not None and n is not None
            order = [iv.var for iv in blk.iter_vars]
            k_major = layouts == {(vk, vj)}
            return DenseShape(
                pos[vi], pos[vj], pos[vk], idx, m, n, order.index(vi), order.index(vj), buf.name,
                k_major,
            )  # fmt: skip
    return None


class PackedDense(ScheduleRule):
    """Pack w j-contiguous, then an R x NB register tile over the whole k (module docstring)."""

    name = "packed_dense"
    version = 3  # 3: shapes no tile divides are padded (pad_spatial), not cut in odd tiles
    exclusive = False  # multi-level tiling and split-K keep their sketches for the block

    def apply(self, sch: Schedule, block: str, ctx: SpaceContext) -> list[Schedule]:
        if not ctx.is_cpu or not is_reduction(sch.func, block):
            return []
        shape = dense_shape(sch, block)
        if shape is None or shape.m < 2:
            return []
        made = try_fork(sch, lambda t: self._build(t, block, shape, ctx.cores))
        return [] if made is None else [made]

    @staticmethod
    def _build(t: Schedule, block: str, shape: DenseShape, cores: int) -> None:
        b = t.get_block(block)
        pad_m, pad_n = padding(shape.m, TILE_ROWS), padding(shape.n, PANEL_WIDTHS)
        m, n = shape.m + pad_m, shape.n + pad_n
        widths = divisors_among(n, PANEL_WIDTHS)
        rows = divisors_among(m, TILE_ROWS)
        wp = None
        if pad_m or pad_n:
            counts = [0, 0, 0]
            counts[shape.i_iter], counts[shape.j_iter] = pad_m, pad_n
            acc, kept = pad_accumulator(t, b, counts)  # the padded output: the register tile
            # the weight's padded copy becomes the packed buffer; x is read in place
            wp = next((c for c in kept if _source_of(t, c) == shape.weight), None)
        if wp is None:
            wp = t.cache_read(b, shape.weight_index, "global")
        nb = t.sample_categorical(widths, uniform(len(widths)))
        if shape.k_major:  # b[k, j] -> b[j // NB, k, j % NB], one whole panel per j0
            t.transform_layout(wp, 0, 1, nb, [1, 0, 2])
            k_copy, j_copy = t.get_loops(wp)
            j0, j1 = t.split(j_copy, [None, nb])
            t.reorder(j0, k_copy, j1)
        else:  # w[j, k] -> w[j // NB, k, j % NB], whole NB-row panels per outer iteration
            t.transform_layout(wp, 0, 0, nb, [0, 2, 1])
            t.split(t.get_loops(wp)[0], [None, nb])
        if not (pad_m or pad_n):
            acc = t.cache_write(b, 0, "local")
        loops = t.get_loops(b)
        i, j, k = loops[shape.i_loop], loops[shape.j_loop], loops[shape.k_loop]
        r = t.sample_categorical(rows, uniform(len(rows)))
        # block sizes that divide the extent for the largest tile keep every split perfect;
        # along i they also leave every core an outer iteration (the parallel loop)
        i_blocks = [
            c for c in BLOCK_TILES if m % (c * max(rows)) == 0 and m // (c * max(rows)) >= cores
        ] or [1]
        j_blocks = [c for c in BLOCK_TILES if n % (c * max(widths)) == 0]
        ib = t.sample_categorical(i_blocks, uniform(len(i_blocks)))
        jb = t.sample_categorical(j_blocks, uniform(len(j_blocks)))
        i0, i1, i2 = t.split(i, [None, ib, r])
        j0, j1, j2 = t.split(j, [None, jb, nb])
        t.reorder(i0, j0, i1, j1, k, i2, j2)
        t.reverse_compute_at(acc, j1)
        t.decompose_reduction(b, k)
        t.vectorize(j2)
        t.unroll(i2)
        t.vectorize(t.get_loops(acc)[-1])


def _source_of(t: Schedule, block: RV) -> str:
    """The name of the buffer a copy block reads."""
    store = store_of(t.get(block))
    assert store is not None and isinstance(store.value, BufferLoad)
    return store.value.buffer.name
