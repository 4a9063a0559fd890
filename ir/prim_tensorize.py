"""The tensorize primitive: put a tensor intrinsic in place of a loop nest."""

from __future__ import annotations

import dataclasses

from .annotation_keys import TENSORIZE
from .errors import ScheduleError
from .expr import Const
from .instruction_traits import primitive
from .intrinsics import get_intrin
from .schedule_state import ScheduleState
from .stmt import BlockRealize, BufferStore, For
from .trace import RV


@primitive()
def tensorize(state: ScheduleState, loop: RV, intrin: str) -> None:
    """Replace the nest rooted at `loop` by a tensor intrinsic (see `intrinsics.py`).

    The nest must be perfectly nested with the intrinsic's extents around one block that
    computes what the intrinsic does (its `pattern` decides); the loop is annotated and the
    CUDA renderer emits the intrinsic in its place.

        for i, j, k in 16 x 16 x 16: acc[i, j] += a[i, k] * b[j, k]
        tensorize(i, "wmma_mma_f16_f32") ->
        for i in range(16): [tensorize='wmma_mma_f16_f32']   (the same nest, rendered as
        load_matrix_sync(a), load_matrix_sync(b), mma_sync(acc))

    With the mma.sync family a and b are register fragments filled by ldmatrix-tensorized
    copy nests.
    """
    info = get_intrin(intrin)
    lp, _ = state.loop(loop)
    chain = [lp]
    while isinstance(chain[-1].body, For):
        chain.append(chain[-1].body)
    body = chain[-1].body
    what = f"tensorize({lp.var.name}, {intrin!r})"
    extents = tuple(int(c.extent.value) if isinstance(c.extent, Const) else -1 for c in chain)
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
    if not info.matches(blk, store):
        raise ScheduleError(
            f"{what}: block {blk.name!r} does not compute {info.doc} into a "
            f"{info.acc_scope} buffer (mma blocks need decompose_reduction first)"
        )
    kept = tuple((k, x) for k, x in lp.annotations if k != TENSORIZE)
    ann = (*kept, (TENSORIZE, intrin))
    state.replace_loop(lp, dataclasses.replace(lp, annotations=ann))
