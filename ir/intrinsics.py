"""Tensor intrinsics that `Schedule.tensorize` can put in place of a loop nest.

Each entry describes the computation its nest must perform (kind, loop extents, operand and
accumulator dtypes and scopes) and carries the pattern that checks a block against it
(`fragment_load`, `zero_fill`, `accumulator_store`, `mma_update`); the CUDA renderer emits
the matching warp-wide instructions.
Two families cover tensor-core matrix multiply-accumulate with float32 accumulation.

WMMA 16x16x16 (the CUDA WMMA API; operands loaded by the intrinsic itself):

* `wmma_fill_f32`: acc[i, j] = 0 over a 16 x 16 tile (loops i, j);
* `wmma_mma_f16_f32`, `wmma_mma_bf16_f32`: acc[i, j] += float(a[i, k]) * float(b[j, k])
  (or b[k, j]) over 16 x 16 x 16 (loops i, j, k), a and b fp16 / bf16 in shared or global
  memory (loaded into fragments with load_matrix_sync), acc a `wmma.accumulator` buffer;
* `wmma_store_f32`: out[i, j] = acc[i, j] over a 16 x 16 tile (store_matrix_sync).

mma.sync m16n8k16 (PTX; operands in registers the schedule names, so one fragment feeds
several MMAs):

* `ldmatrix_a_x4`, `ldmatrix_b_x4`: frag[i, k] = src[...] over a 16 x 16 tile (loops i, k;
  for b, i runs over columns n of the product), `src` in shared memory, `frag` an
  `mma.matrix_a` / `mma.matrix_b` buffer; one `ldmatrix.sync.aligned.m8n8.x4` per tile, with
  `.trans` when the tile is contiguous along i instead of k;
* `mma_fill_f32`: acc[i, j] = 0 over a 16 x 16 tile of an `mma.accumulator` buffer;
* `mma_m16n8k16_f16_f32`, `mma_m16n8k16_bf16_f32`: acc[i, j] += float(a[i, k]) * float(b[j, k])
  over 16 x 16 x 16, a and b fragments: two `mma.sync.aligned.m16n8k16.row.col` (n = 0..7, 8..15);
* `mma_store_f32`: out[i, j] = acc[i, j] over a 16 x 16 tile, each lane storing its 8 values.

All 32 lanes of a warp execute each one together, so a tensorized nest must not sit under a
threadIdx.x loop: bind warps to threadIdx.y / threadIdx.z and launch threadIdx.x with 32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ScheduleError
from .expr import BinOp, BufferLoad, Cast, Const
from .stmt import Block, BufferStore


@dataclass(frozen=True)
class TensorIntrin:
    """A warp-wide tensor-core operation and the nest shape it replaces.

    `extents` is the perfect loop nest it takes the place of; `pattern` decides whether the
    block at the bottom of that nest (a single store) computes what the intrinsic does, so
    `tensorize` needs no knowledge of any family.
    """

    name: str
    kind: str  # "fill" | "mma" | "store" | "load"
    extents: tuple[int, ...]
    in_dtype: str | None
    acc_dtype: str = "float32"
    doc: str = ""
    acc_scope: str = "wmma.accumulator"  # the fragment scope the intrinsic writes or reads
    operand_scopes: tuple[str, ...] = ()  # for "mma": the scopes a and b must live in
    pattern: Callable[[TensorIntrin, Block, BufferStore], bool] = field(kw_only=True)

    def matches(self, blk: Block, store: BufferStore) -> bool:
        """Whether block `blk`, whose body is `store`, computes what this intrinsic does."""
        return self.pattern(self, blk, store)


def fragment_load(intrin: TensorIntrin, blk: Block, store: BufferStore) -> bool:
    """frag[i, k] = src[...]: a shared fp16 / bf16 tile copied into an `acc_scope` fragment
    of the same dtype."""
    v = store.value
    return (
        store.buffer.scope == intrin.acc_scope
        and isinstance(v, BufferLoad)
        and v.buffer.scope == "shared"
        and v.dtype == store.buffer.dtype
        and v.dtype in ("float16", "bfloat16")
    )


def zero_fill(intrin: TensorIntrin, blk: Block, store: BufferStore) -> bool:
    """acc[i, j] = 0 into an `acc_scope` buffer."""
    v = store.value
    return store.buffer.scope == intrin.acc_scope and isinstance(v, Const) and v.value == 0


def accumulator_store(intrin: TensorIntrin, blk: Block, store: BufferStore) -> bool:
    """out[i, j] = acc[i, j] from an `acc_scope` buffer into an `acc_dtype` one."""
    v = store.value
    ok = isinstance(v, BufferLoad) and v.buffer.scope == intrin.acc_scope
    return ok and store.buffer.dtype == intrin.acc_dtype


def mma_update(intrin: TensorIntrin, blk: Block, store: BufferStore) -> bool:
    """acc[i, j] += cast(a[i, k]) * cast(b[...]) with `in_dtype` operands (in
    `operand_scopes` when given), into an `acc_scope` buffer, with the init decomposed away."""
    v = store.value
    ok = (
        blk.init is None
        and store.buffer.scope == intrin.acc_scope
        and isinstance(v, BinOp)
        and v.op == "add"
        and isinstance(v.b, BinOp)
        and v.b.op == "mul"
        and all(
            isinstance(x, Cast)
            and isinstance(x.value, BufferLoad)
            and x.value.dtype == intrin.in_dtype
            for x in (v.b.a, v.b.b)
        )
    )
    if ok and intrin.operand_scopes:
        scopes = {x.value.buffer.scope for x in (v.b.a, v.b.b)}  # type: ignore[union-attr]
        ok = scopes == set(intrin.operand_scopes)
    return ok


_MMA_OPERANDS = ("mma.matrix_a", "mma.matrix_b")

INTRINSICS: dict[str, TensorIntrin] = {
    i.name: i
    for i in (
        TensorIntrin(
            "wmma_fill_f32",
            "fill",
            (16, 16),
            None,
            doc="zero a 16x16 accumulator",
            pattern=zero_fill,
        ),
        TensorIntrin(
            "wmma_mma_f16_f32",
            "mma",
            (16, 16, 16),
            "float16",
            doc="fp16 x fp16 + fp32 MMA",
            pattern=mma_update,
        ),
        TensorIntrin(
            "wmma_mma_bf16_f32",
            "mma",
            (16, 16, 16),
            "bfloat16",
            doc="bf16 x bf16 + fp32 MMA",
            pattern=mma_update,
        ),
        TensorIntrin(
            "wmma_store_f32",
            "store",
            (16, 16),
            None,
            doc="store a 16x16 accumulator",
            pattern=accumulator_store,
        ),
        TensorIntrin(
            "ldmatrix_a_x4",
            "load",
            (16, 16),
            None,
            doc="a 16x16 fp16/bf16 tile from shared memory",
            acc_scope="mma.matrix_a",
            pattern=fragment_load,
        ),
        TensorIntrin(
            "ldmatrix_b_x4",
            "load",
            (16, 16),
            None,
            doc="a 16x16 fp16/bf16 tile from shared memory",
            acc_scope="mma.matrix_b",
            pattern=fragment_load,
        ),
        TensorIntrin(
            "mma_fill_f32",
            "fill",
            (16, 16),
            None,
            doc="zero a 16x16 accumulator",
            acc_scope="mma.accumulator",
            pattern=zero_fill,
        ),
        TensorIntrin(
            "mma_m16n8k16_f16_f32",
            "mma",
            (16, 16, 16),
            "float16",
            doc="fp16 x fp16 + fp32 MMA from register fragments",
            acc_scope="mma.accumulator",
            operand_scopes=_MMA_OPERANDS,
            pattern=mma_update,
        ),
        TensorIntrin(
            "mma_m16n8k16_bf16_f32",
            "mma",
            (16, 16, 16),
            "bfloat16",
            doc="bf16 x bf16 + fp32 MMA from register fragments",
            acc_scope="mma.accumulator",
            operand_scopes=_MMA_OPERANDS,
            pattern=mma_update,
        ),
        TensorIntrin(
            "mma_store_f32",
            "store",
            (16, 16),
            None,
            doc="store a 16x16 accumulator",
            acc_scope="mma.accumulator",
            pattern=accumulator_store,
        ),
    )
}


def get_intrin(name: str) -> TensorIntrin:
    """The intrinsic called `name`; ScheduleError naming the known ones otherwise."""
    try:
        return INTRINSICS[name]
    except KeyError:
        known = ", ".join(sorted(INTRINSICS))
        raise ScheduleError(f"unknown tensor intrinsic {name!r}; known: {known}") from None


from . import intrinsics_wgmma  # noqa: E402, F401  (adds the Hopper wgmma family to INTRINSICS)
