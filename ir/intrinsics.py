"""Tensor intrinsics that `Schedule.tensorize` can put in place of a loop nest.

Each entry describes the computation its nest must perform (kind, loop extents, operand and
accumulator dtypes); the CUDA renderer emits the matching warp-wide instructions. The WMMA
16x16x16 family covers tensor-core matrix multiply-accumulate with float32 accumulation:

* `wmma_fill_f32`: acc[i, j] = 0 over a 16 x 16 tile (loops i, j);
* `wmma_mma_f16_f32`, `wmma_mma_bf16_f32`: acc[i, j] += float(a[i, k]) * float(b[j, k])
  (or b[k, j]) over 16 x 16 x 16 (loops i, j, k), a and b fp16 / bf16 in shared or global
  memory (loaded into fragments with load_matrix_sync), acc a `wmma.accumulator` buffer;
* `wmma_store_f32`: out[i, j] = acc[i, j] over a 16 x 16 tile (store_matrix_sync).

All 32 lanes of a warp execute each one together, so a tensorized nest must not sit under a
threadIdx.x loop: bind warps to threadIdx.y / threadIdx.z and launch threadIdx.x with 32.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ScheduleError


@dataclass(frozen=True)
class TensorIntrin:
    """A warp-wide tensor-core operation and the nest shape it replaces."""

    name: str
    kind: str  # "fill" | "mma" | "store"
    extents: tuple[int, ...]
    in_dtype: str | None
    acc_dtype: str = "float32"
    doc: str = ""


INTRINSICS: dict[str, TensorIntrin] = {
    i.name: i
    for i in (
        TensorIntrin("wmma_fill_f32", "fill", (16, 16), None, doc="zero a 16x16 accumulator"),
        TensorIntrin(
            "wmma_mma_f16_f32", "mma", (16, 16, 16), "float16", doc="fp16 x fp16 + fp32 MMA"
        ),
        TensorIntrin(
            "wmma_mma_bf16_f32", "mma", (16, 16, 16), "bfloat16", doc="bf16 x bf16 + fp32 MMA"
        ),
        TensorIntrin("wmma_store_f32", "store", (16, 16), None, doc="store a 16x16 accumulator"),
    )
}


def get_intrin(name: str) -> TensorIntrin:
    """The intrinsic called `name`; ScheduleError naming the known ones otherwise."""
    try:
        return INTRINSICS[name]
    except KeyError:
        known = ", ".join(sorted(INTRINSICS))
        raise ScheduleError(f"unknown tensor intrinsic {name!r}; known: {known}") from None
