"""The lowering passes each target runs after `lower`, in order, before its renderer prints.

`lower` is target-independent (blocks to loops, buffers placed, pipelines expanded, auto
unroll). The passes here take the decisions the printed code depends on per target, so that
the renderers only print what the lowered IR says; see docs/ir.md, "Lowering passes".
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import CodegenError
from .lower import lower
from .pass_clamp_copies import clamp_register_copies
from .pass_hoist import hoist_invariant_calls, hoist_loads
from .pass_hoist_divisions import hoist_block_divisions
from .pass_masked_update import guard_masked_updates
from .pass_predicate import predicate_stores
from .pass_register_guards import unguard_register_updates
from .pass_tensor_guards import unguard_tensor_tiles
from .pass_tensor_operands import fill_tensor_operands
from .pass_thread_sync import insert_thread_syncs
from .pass_vectorize import mark_vector_loops
from .stmt import PrimFunc

Pass = Callable[[PrimFunc], PrimFunc]

TARGET_PASSES: dict[str, tuple[Pass, ...]] = {
    "c": (hoist_invariant_calls,),
    "cuda": (
        clamp_register_copies,
        fill_tensor_operands,
        mark_vector_loops,
        hoist_loads,
        predicate_stores,
        insert_thread_syncs,
        guard_masked_updates,
        unguard_register_updates,
        unguard_tensor_tiles,
        hoist_block_divisions,
    ),
}


def lower_for_target(func: PrimFunc, lang: str) -> PrimFunc:
    """`lower(func)` followed by the passes of the target language `lang` ("c" or "cuda")."""
    passes = TARGET_PASSES.get(lang)
    if passes is None:
        raise CodegenError(f"no lowering passes for {lang!r}; known: {', '.join(TARGET_PASSES)}")
    lowered = lower(func)
    for run in passes:
        lowered = run(lowered)
    return lowered
