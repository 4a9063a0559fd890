"""The per-target lowering passes: they record vector accesses, hoisted loads, single-thread
stores and barriers in the lowered IR, and the CUDA renderer prints only what they recorded."""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import pytest

from tunefleet.ir import CodegenError, Schedule, default_schedule, ops
from tunefleet.ir.annotation_keys import HOISTED_CALLS, HOISTED_LOADS, VECTOR_ACCESS
from tunefleet.ir.expr import BinOp
from tunefleet.ir.intrinsics import INTRINSICS
from tunefleet.ir.lower import lower
from tunefleet.ir.pass_hoist import HoistedLoads
from tunefleet.ir.pass_vectorize import VectorAccess
from tunefleet.ir.render_c import CRenderer
from tunefleet.ir.render_cuda import CUDARenderer
from tunefleet.ir.stmt import For, PrimFunc, SingleThread, SyncThreads
from tunefleet.ir.target_passes import TARGET_PASSES, lower_for_target
from tunefleet.ir.visit import walk

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))

from gemv_cuda import gemv_schedule


def _nodes(func: PrimFunc, kind: type) -> list:
    return [n for n in walk(func.body) if isinstance(n, kind)]


def _annotated(func: PrimFunc, key: str) -> list:
    return [v for n in _nodes(func, For) for k, v in n.annotations if k == key]


def _softmax() -> PrimFunc:
    func = ops.get_op("softmax").build({"m": 5, "n": 300}, "float32")
    return default_schedule(func, target="cuda").func


def test_cuda_runs_its_passes_in_order_and_c_none() -> None:
    names = [p.__name__ for p in TARGET_PASSES["cuda"]]
    assert names == ["clamp_register_copies", "fill_tensor_operands", "mark_vector_loops",
                     "hoist_loads",
                     "predicate_stores", "insert_thread_syncs", "guard_masked_updates",
                     "unguard_register_updates", "unguard_tensor_tiles",
                     "hoist_block_divisions"]  # fmt: skip
    assert [p.__name__ for p in TARGET_PASSES["c"]] == ["hoist_invariant_calls"]
    with pytest.raises(CodegenError, match="no lowering passes for 'metal'"):
        lower_for_target(_softmax(), "metal")


def _store_tile(scope: str, rows: int):
    """`for i, j (tensorized mma_store_f32): if (i0 + i < n) out[i, j] = acc[i, j]`, `out`
    a `rows` x 16 tile in `scope`."""
    import dataclasses

    from tunefleet.ir.annotation_keys import TENSORIZE
    from tunefleet.ir.expr import Buffer, BufferLoad, Var, const
    from tunefleet.ir.stmt import BufferStore, IfThenElse

    i, j, i0, n = Var("i"), Var("j"), Var("i0"), Var("n")
    acc = Buffer("acc", (const(16), const(16)), "float32", "mma.accumulator")
    out = Buffer("out", (const(rows), const(16)), "float32", scope)
    store = BufferStore(out, (i, j), BufferLoad(acc, (i, j)))
    nest = For(i, const(16), For(j, const(16), IfThenElse(i0 + i < n, store)),
               annotations=((TENSORIZE, "mma_store_f32"),))  # fmt: skip
    return dataclasses.replace(_softmax(), body=nest)


def test_a_tensorized_nest_loses_its_guard_only_on_chip_and_in_bounds() -> None:
    from tunefleet.ir.pass_tensor_guards import unguard_tensor_tiles
    from tunefleet.ir.stmt import IfThenElse

    def guarded(func: PrimFunc) -> bool:
        return bool(_nodes(unguard_tensor_tiles(func), IfThenElse))

    assert not guarded(_store_tile("shared", 16))  # the tile's rows past n: computed, unread
    assert guarded(_store_tile("global", 16))  # a row past n in memory belongs to another
    assert guarded(_store_tile("shared", 8))  # rows 8..15 would land outside the tile


def _operand_tile(guard_on_m: bool):
    """`if (guard) v_s[k, c] = v[k0 + k, c]` feeding a tensorized ldmatrix of v_s; the guard
    bounds a symbolic length (`k0 + k < m`) or the copy's threads (`k < 8`)."""
    import dataclasses

    from tunefleet.ir.annotation_keys import TENSORIZE
    from tunefleet.ir.expr import Buffer, BufferLoad, Var, const
    from tunefleet.ir.stmt import BufferStore, IfThenElse, SeqStmt

    k, c, k0, m, i = Var("k"), Var("c"), Var("k0"), Var("m"), Var("i")
    v = Buffer("v", (m, const(16)), "float16", "global")
    tile = Buffer("v_s", (const(16), const(16)), "float16", "shared")
    frag = Buffer("v_f", (const(16), const(16)), "float16", "mma.matrix_b")
    guard = k0 + k < m if guard_on_m else k < 8
    copy = For(k, const(16), For(c, const(16), IfThenElse(
        guard, BufferStore(tile, (k, c), BufferLoad(v, (k0 + k, c))))))  # fmt: skip
    load = For(i, const(16), For(c, const(16), BufferStore(frag, (i, c), BufferLoad(tile, (i, c)))),
               annotations=((TENSORIZE, "ldmatrix_b_x4"),))  # fmt: skip
    func = _softmax()
    return dataclasses.replace(func, params=(v,), body=SeqStmt((copy, load)))


def test_an_operand_tile_past_a_symbolic_end_is_filled_with_clamped_reads() -> None:
    """A tile a tensor-core step reads whole: a row past the kv length is read at the last
    row (finite, where unread garbage along an MMA's reduction would reach every result);
    a bound on the copy's threads stays."""
    from tunefleet.ir.pass_tensor_operands import fill_tensor_operands
    from tunefleet.ir.stmt import IfThenElse

    filled = fill_tensor_operands(_operand_tile(True))
    assert not _nodes(filled, IfThenElse)
    from tunefleet.ir.expr import BufferLoad

    (read,) = [n for n in walk(filled.body) if isinstance(n, BufferLoad) and n.buffer.name == "v"]
    assert isinstance(read.indices[0], BinOp) and read.indices[0].op == "min"
    kept = fill_tensor_operands(_operand_tile(False))
    assert len(_nodes(kept, IfThenElse)) == 1


def test_barriers_and_single_thread_stores_are_statements() -> None:
    cuda = lower_for_target(_softmax(), "cuda")
    assert len(_nodes(cuda, SyncThreads)) >= 2
    assert not _nodes(lower(_softmax()), SyncThreads)
    # the GEMV output store sits under threadIdx.y but outside the threadIdx.x lanes
    gemv = gemv_schedule(1, 512, 1024).func
    guarded = _nodes(lower_for_target(gemv, "cuda"), SingleThread)
    assert [g.threads for g in guarded] == [("threadIdx.x",)]
    assert guarded[0].body.buffer.name == "dense" and guarded[0].body.buffer.scope == "global"
    assert not _nodes(lower(gemv), SingleThread)


def _bodies(func: PrimFunc, entry: str) -> tuple[str, str]:
    bare = CUDARenderer().render(lower(func), entry, ())
    full = CUDARenderer().render(lower_for_target(func, "cuda"), entry, ())
    return bare.split(f"{entry}(", 1)[1], full.split(f"{entry}(", 1)[1]


def test_the_renderer_decides_no_barrier_or_guard_itself() -> None:
    """Printed without the passes, a kernel has no barriers, thread-0 guards or wide
    accesses: they exist only where the lowered IR holds them."""
    bare, full = _bodies(_softmax(), "softmax_kernel")
    assert "__syncthreads();" not in bare and full.count("__syncthreads();") >= 2
    bare, full = _bodies(gemv_schedule(1, 512, 1024).func, "dense_kernel")
    assert "if (threadIdx.x == 0) " not in bare and "if (threadIdx.x == 0) " in full
    assert "uint4" not in bare and "uint4" in full


def _rows(n: int, unit: int) -> Schedule:
    sch = Schedule(ops.get_op("add").build({"m": 3, "n": n}, "float16"))
    i, j = sch.get_loops(sch.get_block("add"))
    sch.bind(i, "blockIdx.x")
    j0, j1 = sch.split(j, [None, unit])
    sch.bind(j0, "threadIdx.x")
    sch.vectorize(j1)
    return sch


def test_vector_access_needs_contiguous_aligned_runs() -> None:
    aligned = _annotated(lower_for_target(_rows(16, 8).func, "cuda"), VECTOR_ACCESS)
    assert len(aligned) == 1 and isinstance(aligned[0], VectorAccess)
    access = aligned[0]
    assert access.lanes == 8 and len(access.loads) == 2 and access.store is not None
    assert not access.async_copy and access.store_threads == ()
    # rows of 12 halves: a row's second run does not start on 16 bytes
    assert _annotated(lower_for_target(_rows(12, 8).func, "cuda"), VECTOR_ACCESS) == []
    # the C target leaves vector loops to the compiler (omp simd)
    assert _annotated(lower_for_target(_rows(16, 8).func, "c"), VECTOR_ACCESS) == []


def test_hoisted_loads_only_where_asked_and_shaped() -> None:
    hoisted = _annotated(lower_for_target(gemv_schedule(1, 512, 1024).func, "cuda"), HOISTED_LOADS)
    assert len(hoisted) == 1 and isinstance(hoisted[0], HoistedLoads)
    assert hoisted[0].count == 4 and hoisted[0].lanes == 8
    assert {x.buffer.name for x, _ in hoisted[0].loads} == {"x", "w"}
    plain = gemv_schedule(1, 512, 1024, hoist=False).func
    assert _annotated(lower_for_target(plain, "cuda"), HOISTED_LOADS) == []


def test_every_tensor_intrinsic_family_has_a_printer() -> None:
    families = {info.acc_scope.split(".", 1)[0] for info in INTRINSICS.values()}
    assert families <= set(CUDARenderer.tensor_families)
    for method in CUDARenderer.tensor_families.values():
        assert callable(getattr(CUDARenderer, method))


def test_c_hoists_invariant_math_calls_the_pass_names() -> None:
    func = default_schedule(ops.get_op("rmsnorm").build({"m": 4, "n": 64}, "float32")).func
    lowered = lower_for_target(func, "c")
    calls = [c for group in _annotated(lowered, HOISTED_CALLS) for c in group]
    assert [c.op for c in calls] == ["rsqrt"]
    full = CRenderer().render(lowered, "k", ())
    bare = CRenderer().render(lower(func), "k", ())
    assert "const float tf_inv0 = (1.0f / sqrtf(" in full and "tf_inv" not in bare


def test_no_barrier_after_a_loop_whose_iterations_end_with_one() -> None:
    """A block-level loop that writes and reads shared memory ends each iteration with a
    barrier; the statement after it needs no second one (the tensor-core dense reuses its
    tiles' bytes for the output tile right after its k loop)."""
    from dense_tensorcore_cuda import dense_tc_schedule

    func = dense_tc_schedule(256, 256, 256, "float16", stages=1).func
    lines = [
        ln.strip()
        for ln in CUDARenderer().render(lower_for_target(func, "cuda"), "k", ()).splitlines()
        if ln.strip() not in ("{", "}")
    ]
    barriers = [i for i, ln in enumerate(lines) if ln == "__syncthreads();"]
    assert barriers, "the k loop's iterations end with a barrier"
    assert all(b - a > 1 for a, b in pairwise(barriers)), "\n".join(lines)


def test_a_guarded_partial_sum_becomes_a_guarded_update_with_the_same_result() -> None:
    """rfactor over a symbolic row length moves `k < n` into the partial sums' value; the
    CUDA lowering turns `acc + (k < n ? x*x : 0)` into `if (k < n) acc = acc + x*x`, and the
    interpreted kernel still matches numpy at a length that is no multiple of the split."""
    import numpy as np

    from tunefleet.ir import Var
    from tunefleet.ir.expr import Select
    from tunefleet.ir.gpu_interpreter import interpret
    from tunefleet.ir.stmt import BufferStore, IfThenElse

    rms = ops.get_op("rmsnorm")
    sch = Schedule(rms.build({"m": 3, "n": Var("n")}, "float32"))
    _, k = sch.get_loops(sch.get_block("rmsnorm_sumsq"))
    _, k1 = sch.split(k, [None, 16])
    sch.rfactor(k1, 0)
    plain = [s for s in _nodes(lower(sch.func), BufferStore) if "_rf" in s.buffer.name]
    assert any(isinstance(s.value, BinOp) and isinstance(s.value.b, Select) for s in plain)
    guarded = [g for g in _nodes(lower_for_target(sch.func, "cuda"), IfThenElse)
               if isinstance(g.then_case, BufferStore) and "_rf" in g.then_case.buffer.name
               and isinstance(g.then_case.value, BinOp)]  # fmt: skip
    assert guarded and not any(isinstance(n, Select) for g in guarded for n in walk(g.then_case))
    dims = {"m": 3, "n": 37}
    inputs = rms.make_inputs(dims, "float32", np.random.default_rng(0))
    (out,) = interpret(sch.func, inputs, dims)
    np.testing.assert_allclose(out, rms.reference(*inputs), rtol=1e-5, atol=1e-5)


def test_block_invariant_divisions_are_computed_once_at_the_top_of_the_block() -> None:
    """A prompt's attention divides the block index by the token tiles, `(n + 7) / 8`, in
    every guard and index of its unrolled key loops; after the CUDA passes no division by a
    runtime size is left inside a loop below the block: the two are computed once."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.presets import resolve_model
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.ir.expr import BufferLoad, Const

    (task,) = [t for t in model_tasks(resolve_model("llama-3-8b"), Phase.PREFILL)
               if t.name.startswith("attn_scores")]  # fmt: skip
    func = default_schedule(task.func, "cuda", "sm_90").func

    def divisions_in_loops(low: PrimFunc) -> int:
        inner = [f for f in _nodes(low, For) if f.kind != "thread_binding"]
        return sum(1 for f in inner for n in walk(f.body) if isinstance(n, BinOp)
                   and n.op in ("floordiv", "floormod") and not isinstance(n.b, Const))  # fmt: skip

    assert divisions_in_loops(lower(func)) > 20
    cuda = lower_for_target(func, "cuda")
    assert divisions_in_loops(cuda) == 0
    held = {n.buffer.name for n in walk(cuda.body) if isinstance(n, BufferLoad)
            and n.buffer.name.startswith("tf_div_")}  # fmt: skip
    assert len(held) == 2


def test_register_copies_of_a_ragged_tile_read_clamped_rows_unguarded() -> None:
    """A GEMV row tile of 4 over a symbolic m copies each row of x into registers under
    `row < m`; the CUDA lowering drops that guard and reads row min(row, m - 1) instead,
    keeps the guard on the sums, and the interpreted kernel matches numpy at m = 7 (a last
    tile of 3 rows)."""
    import numpy as np

    from tunefleet.ir import Var
    from tunefleet.ir.expr import BufferLoad
    from tunefleet.ir.gpu_interpreter import interpret
    from tunefleet.ir.stmt import BufferStore, IfThenElse

    dense = ops.get_op("dense")
    sch = Schedule(dense.build({"m": Var("m"), "n": 64, "k": 32}, "float32"))
    acc = sch.get_block("dense")
    i, j, k = sch.get_loops(acc)
    io, ii = sch.split(i, [None, 4])
    sch.reorder(io, j, ii, k)
    sch.bind(io, "blockIdx.x")
    sch.bind(j, "threadIdx.x")
    copy = sch.cache_read(acc, 0, "local")
    sch.compute_at(copy, ii)

    def copies(low: PrimFunc) -> tuple[list, list]:
        stores = [s for s in _nodes(low, BufferStore) if s.buffer.scope == "local"
                  and isinstance(s.value, BufferLoad) and s.value.buffer.name == "x"]  # fmt: skip
        guarded = [g for g in _nodes(low, IfThenElse) if g.then_case in stores]
        return stores, guarded

    stores, guarded = copies(lower(sch.func))
    assert stores and len(guarded) == len(stores)
    stores, guarded = copies(lower_for_target(sch.func, "cuda"))
    assert stores and not guarded
    row = stores[0].value.indices[0]
    assert isinstance(row, BinOp) and row.op == "min"
    sums = [g.then_case for g in _nodes(lower_for_target(sch.func, "cuda"), IfThenElse)]
    assert any(isinstance(s, BufferStore) and s.buffer.name.startswith("dense") for s in sums)
    dims = {"m": 7}
    inputs = dense.make_inputs({"m": 7, "n": 64, "k": 32}, "float32", np.random.default_rng(0))
    (out,) = interpret(sch.func, inputs, dims)
    np.testing.assert_allclose(out, dense.reference(*inputs), rtol=1e-5, atol=1e-5)


def test_register_updates_lose_the_guards_that_bound_their_own_slots() -> None:
    """In Llama-3-8B's prompt attention the scores' products lose `row < n && key < m` (a
    slot of a row or key past the tile is its own and never read), the context's partial
    sums keep `key < m` (they sum over keys: dropping it would add to a slot that is read),
    and a softmax row's partial sums, which the threads combine, keep their thread bounds."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.presets import resolve_model
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.ir.pass_register_guards import unguard_register_updates
    from tunefleet.ir.stmt import BufferStore, IfThenElse, ThreadAllReduce

    def guards_of(func: PrimFunc, name: str) -> list[str]:
        return [repr(g.cond) for g in _nodes(func, IfThenElse)
                if any(isinstance(s, BufferStore) and s.buffer.name.startswith(name)
                       for s in walk(g.then_case))]  # fmt: skip

    (task,) = [t for t in model_tasks(resolve_model("llama-3-8b"), Phase.PREFILL)
               if t.name.startswith("attn_scores")]  # fmt: skip
    cuda = lower_for_target(default_schedule(task.func, "cuda", "sm_90").func, "cuda")
    assert not [g for g in guards_of(cuda, "scores") if "Var('m'" in g or "Var('n'" in g]
    assert any("Var('m'" in g for g in guards_of(cuda, "context_acc_rf"))
    before = lower(_softmax())
    combined = {n.buffer.name for n in _nodes(before, ThreadAllReduce)}
    assert combined
    after = unguard_register_updates(before)
    for name in combined:
        assert guards_of(after, name) == guards_of(before, name)
