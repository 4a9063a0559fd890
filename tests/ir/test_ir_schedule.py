"""Schedule primitives keep semantics (gcc vs numpy); illegal ones raise and change nothing."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ir_gcc_harness import check_against_reference, run_kernel

from tunefleet.ir import Var, create_prim_func, ops, placeholder
from tunefleet.ir.codegen import build_source
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.schedule import Schedule

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

MATMUL = ops.get_op("matmul")
DENSE = ops.get_op("dense")
SOFTMAX = ops.get_op("softmax")
RMSNORM = ops.get_op("rmsnorm")


def _matmul(dims=None):
    dims = dims or {"m": 7, "n": 77, "k": 129}
    return Schedule(MATMUL.build(dims)), dims


def _assert_unchanged(sch: Schedule, fn) -> str:
    before_func, before_trace = sch.func, sch.trace
    with pytest.raises(ScheduleError) as info:
        fn()
    assert sch.func == before_func
    assert sch.trace == before_trace
    return str(info.value)


def test_split_perfect_imperfect_and_inferred() -> None:
    sch, dims = _matmul()
    i, j, k = sch.get_loops(sch.get_block("matmul"))
    i0, _i1 = sch.split(i, [None, 4])  # 7 -> 2 x 4 with a guard
    _j0, j1, _j2 = sch.split(j, [3, None, 5])  # 77 -> 3 x 6 x 5 (90 >= 77)
    k0, k1 = sch.split(k, [43, 3])  # perfect
    assert sch.get(i0).extent.value == 2 and sch.get(j1).extent.value == 6
    assert "where(" in sch.func.script()
    check_against_reference(sch, MATMUL, dims)
    msg = _assert_unchanged(sch, lambda: sch.split(k0, [2, 3]))
    assert "less than the extent" in msg
    _assert_unchanged(sch, lambda: sch.split(k1, [None, None]))


def test_split_symbolic_extent_guards_at_call_time() -> None:
    func = MATMUL.build({"m": Var("m"), "n": 16, "k": Var("k")})
    sch = Schedule(func)
    i, j, k = sch.get_loops(sch.get_block("matmul"))
    i0, _ = sch.split(i, [None, 8])
    sch.split(k, [None, 4])
    sch.split(j, [4, 4])
    msg = _assert_unchanged(sch, lambda: sch.split(i0, [2, 2]))
    assert "symbolic extent" in msg
    for m, kk in ((1, 1), (7, 77), (129, 5)):
        check_against_reference(sch, MATMUL, {"m": m, "n": 16, "k": kk})


def test_fuse_and_reorder() -> None:
    sch, dims = _matmul()
    i, j, k = sch.get_loops(sch.get_block("matmul"))
    sch.reorder(k, i, j)
    check_against_reference(sch, MATMUL, dims)
    k, i, j = sch.get_loops(sch.get_block("matmul"))
    f = sch.fuse(i, j)
    assert sch.get(f).extent.value == 7 * 77
    check_against_reference(sch, MATMUL, dims)
    f0, f1 = sch.split(f, [None, 16])
    sch.vectorize(f1)
    check_against_reference(sch, MATMUL, dims)
    msg = _assert_unchanged(sch, lambda: sch.fuse(k, f1))
    assert "not perfectly nested" in msg
    _assert_unchanged(sch, lambda: sch.reorder(f0, f0))


def test_fuse_symbolic() -> None:
    func = ops.get_op("add").build({"m": Var("m"), "n": Var("n")})
    sch = Schedule(func)
    i, j = sch.get_loops(sch.get_block("add"))
    f = sch.fuse(i, j)
    sch.parallel(f)
    for dims in ({"m": 7, "n": 77}, {"m": 1, "n": 129}):
        check_against_reference(sch, ops.get_op("add"), dims)


def test_parallel_vectorize_unroll_and_illegal_kinds() -> None:
    sch, dims = _matmul()
    i, j, k = sch.get_loops(sch.get_block("matmul"))
    msg = _assert_unchanged(sch, lambda: sch.parallel(k))
    assert "reduction" in msg and "race" in msg
    _assert_unchanged(sch, lambda: sch.vectorize(i))  # not innermost
    sch.reorder(i, k, j)
    sch.parallel(i)
    sch.vectorize(j)
    sch.unroll(k)
    with pytest.raises(ScheduleError, match="unknown annotation key 'note'"):
        sch.annotate(sch.get_block("matmul"), "note", "tiled")
    src = build_source(sch).source
    assert (
        "#pragma omp parallel for" in src
        and "#pragma omp simd" in src
        and "#pragma GCC unroll" in src
    )
    check_against_reference(sch, MATMUL, dims)


def test_softmax_compute_at_chain_and_dependency_error() -> None:
    dims = {"m": 7, "n": 129}
    sch = Schedule(SOFTMAX.build(dims))
    out = sch.get_block("softmax")
    mx, sm = sch.get_block("softmax_max"), sch.get_block("softmax_sum")
    i, _ = sch.get_loops(out)
    msg = _assert_unchanged(sch, lambda: sch.compute_at(mx, i))
    assert "softmax_sum" in msg and "outside loop" in msg
    sch.compute_at(sm, i)
    sch.compute_at(mx, i)
    sch.parallel(i)
    assert len(sch.get_loops(mx)) == 2
    check_against_reference(sch, SOFTMAX, dims)
    # buffers of one row became per-iteration scalars inside the parallel loop
    assert "softmax_max[1]" in build_source(sch).source


def test_cache_read_compute_at_tile() -> None:
    sch, dims = _matmul({"m": 16, "n": 77, "k": 20})
    blk = sch.get_block("matmul")
    cache = sch.cache_read(blk, 1, "local")  # b
    i, j, k = sch.get_loops(blk)
    j0, j1 = sch.split(j, [None, 8])
    sch.reorder(j0, i, k, j1)
    sch.compute_at(cache, j0)
    check_against_reference(sch, MATMUL, dims)
    src = build_source(sch).source
    assert "b_local[160]" in src  # a 20 x 8 tile of b per j0 iteration
    _assert_unchanged(sch, lambda: sch.cache_read(blk, 5, "local"))
    _assert_unchanged(sch, lambda: sch.cache_read(blk, 0, "texture"))


def test_cache_write_reverse_compute_at_tile() -> None:
    sch, dims = _matmul({"m": 16, "n": 77, "k": 20})
    blk = sch.get_block("matmul")
    wb = sch.cache_write(blk, 0, "local")
    i, j, k = sch.get_loops(blk)
    i0, i1 = sch.split(i, [None, 4])
    j0, j1 = sch.split(j, [None, 16])
    sch.reorder(i0, j0, i1, k, j1)
    msg = _assert_unchanged(sch, lambda: sch.reverse_compute_at(wb, k))
    assert "reduction" in msg
    sch.reverse_compute_at(wb, j0)
    sch.parallel(i0)
    sch.vectorize(j1)
    check_against_reference(sch, MATMUL, dims)
    assert "matmul_local[64]" in build_source(sch).source


def test_dense_epilogue_reverse_compute_at_and_inline() -> None:
    dims = {"m": 7, "n": 33, "k": 77}
    for how in ("at", "inline"):
        sch = Schedule(DENSE.build(dims, bias=True))
        acc, epi = sch.get_block("dense_acc"), sch.get_block("dense")
        i, j, _k = sch.get_loops(acc)
        if how == "at":
            sch.reverse_compute_at(epi, i)
        else:
            msg = _assert_unchanged(sch, lambda sch=sch, epi=epi: sch.reverse_compute_inline(epi))
            assert "reduction" in msg
            msg = _assert_unchanged(sch, lambda sch=sch, acc=acc: sch.compute_inline(acc))
            assert "reduction" in msg
            sch.reverse_compute_at(epi, j)
        check_against_reference(sch, DENSE, dims, bias=True)


def _add_gelu(m, n):
    a = placeholder((m, n), "float32", "a")
    b = placeholder((m, n), "float32", "b")
    s = ops.add_compute(a, b)
    g = ops.gelu_compute(s)
    return create_prim_func([a, b, g], name="add_gelu")


def _run_add_gelu(sch, dims):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((dims["m"], dims["n"])).astype(np.float32)
    b = rng.standard_normal((dims["m"], dims["n"])).astype(np.float32)
    (out,) = run_kernel(build_source(sch), [a, b], dims)
    want = ops.get_op("gelu").reference(ops.get_op("add").reference(a, b))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)


def test_compute_inline_and_reverse_compute_inline_fused_elementwise() -> None:
    dims = {"m": 7, "n": 77}
    sch = Schedule(_add_gelu(7, 77))
    sch.compute_inline(sch.get_block("add"))
    assert [b.block.name for b in _blocks(sch)] == ["gelu"]
    _run_add_gelu(sch, dims)
    sch = Schedule(_add_gelu(Var("m"), 77))
    g = sch.get_block("gelu")
    sch.reverse_compute_inline(g)
    assert [b.block.name for b in _blocks(sch)] == ["add"]
    _run_add_gelu(sch, dims)
    add = sch.get_block("add")
    msg = _assert_unchanged(sch, lambda: sch.compute_inline(add))
    assert "output" in msg


def _blocks(sch):
    from tunefleet.ir.schedule_tree import blocks

    return [b for b, _ in blocks(sch.func)]


def test_decompose_reduction() -> None:
    sch, dims = _matmul()
    blk = sch.get_block("matmul")
    i, j, k = sch.get_loops(blk)
    j0, j1 = sch.split(j, [None, 8])
    sch.reorder(i, j0, k, j1)
    init = sch.decompose_reduction(blk, k)
    assert sch.get(init).name == "matmul_init"
    sch.vectorize(j1)
    check_against_reference(sch, MATMUL, dims)
    msg = _assert_unchanged(sch, lambda: sch.decompose_reduction(blk, i))
    assert "no init" in msg


def test_rfactor_sum_and_max() -> None:
    dims = {"m": 7, "n": 129}
    sch = Schedule(RMSNORM.build(dims))
    ss = sch.get_block("rmsnorm_sumsq")
    _, k = sch.get_loops(ss)
    k0, k1 = sch.split(k, [None, 4])
    rf = sch.rfactor(k1, 0)
    assert sch.get(rf).name == "rmsnorm_sumsq_rf"
    check_against_reference(sch, RMSNORM, dims)
    sch = Schedule(SOFTMAX.build(dims))
    mx = sch.get_block("softmax_max")
    _i, k = sch.get_loops(mx)
    k0, k1 = sch.split(k, [None, 16])
    sch.rfactor(k0, 1)
    check_against_reference(sch, SOFTMAX, dims)
    spatial = sch.get_loops(sch.get_block("softmax"))[1]
    msg = _assert_unchanged(sch, lambda: sch.rfactor(spatial, 0))
    assert "not a reduction" in msg


def test_rfactor_over_a_symbolic_extent() -> None:
    """Splitting a reduction of symbolic extent guards `k < n`; rfactor moves that guard into
    the partial sums' value (a symbolic dim is not a spatial loop)."""
    sch = Schedule(RMSNORM.build({"m": 7, "n": Var("n")}))
    _, k = sch.get_loops(sch.get_block("rmsnorm_sumsq"))
    _, k1 = sch.split(k, [None, 16])
    sch.rfactor(k1, 0)
    check_against_reference(sch, RMSNORM, {"m": 7, "n": 129})


def test_decompose_reduction_under_a_symbolic_split_of_its_reduce_loop() -> None:
    """Splitting a partial sum's reduce loop of symbolic extent guards the steps with
    `k0*4 + k1 < (n + 15) // 16` (reduce loops and a symbolic dim): the init placed before
    k0 drops that guard and the sums still match numpy, including where n leaves a step of
    the split empty. (A guard that also reads spatial loops keeps its first step's value:
    decode attention's partial sums, tests/ir/test_ir_gpu_interpreter.py.)"""
    sch = Schedule(RMSNORM.build({"m": 7, "n": Var("n")}))
    _, k = sch.get_loops(sch.get_block("rmsnorm_sumsq"))
    _, k1 = sch.split(k, [None, 16])
    rf = sch.rfactor(k1, 0)
    i, steps, lane = sch.get_loops(rf)
    sch.reorder(i, lane, steps)
    k0, _ = sch.split(steps, [None, 4])
    assert "(n + 15) // 16" in sch.func.script().split('block("rmsnorm_sumsq_rf")')[1][:900]
    init = sch.decompose_reduction(rf, k0)
    assert sch.get(init).name == "rmsnorm_sumsq_rf_init"
    for n in (129, 5, 16):
        check_against_reference(sch, RMSNORM, {"m": 7, "n": n})


def test_sampling_instructions_and_decisions() -> None:
    sch, _dims = _matmul({"m": 16, "n": 64, "k": 24})
    blk = sch.get_block("matmul")
    _i, j, k = sch.get_loops(blk)
    tiles = sch.sample_perfect_tile(j, n=3, max_innermost_factor=8)
    vals = [sch.get(t) for t in tiles]
    assert np.prod(vals) == 64 and vals[-1] <= 8
    sch.split(j, tiles)
    c = sch.sample_categorical([0, 16, 64], [0.2, 0.3, 0.5])
    assert sch.get(c) in (0, 16, 64)
    check_against_reference(sch, MATMUL, {"m": 16, "n": 64, "k": 24})
    _assert_unchanged(sch, lambda: sch.sample_perfect_tile(k, n=2, decision=[5, 5]))
    _assert_unchanged(sch, lambda: sch.sample_categorical([1, 2], [0.5, 0.5], decision=7))


def test_sample_compute_location() -> None:
    dims = {"m": 7, "n": 129}
    for seed in range(4):
        sch = Schedule(SOFTMAX.build(dims), seed=seed)
        sm = sch.get_block("softmax_sum")
        loc = sch.sample_compute_location(sm)
        sch.compute_at(sm, loc)
        check_against_reference(sch, SOFTMAX, dims)
        replay = sch.trace.apply(SOFTMAX.build(dims))
        assert replay.func == sch.func
    msg = _assert_unchanged(sch, lambda: sch.sample_compute_location(sm, decision=5))
    assert "not -1 or a loop index" in msg


def test_gpu_style_allocation_placement_follows_scope() -> None:
    from tunefleet.ir.lower import lower
    from tunefleet.ir.stmt import Allocate, For
    from tunefleet.ir.visit import walk

    sch = Schedule(MATMUL.build({"m": 64, "n": 64, "k": 64}))
    blk = sch.get_block("matmul")
    shared = sch.cache_read(blk, 1, "shared")
    local = sch.cache_write(blk, 0, "local")
    i, j, k = sch.get_loops(blk)
    i0, i1 = sch.split(i, [None, 16])
    sch.reorder(i0, i1, j, k)
    sch.compute_at(shared, i0)
    sch.reverse_compute_at(local, i1)
    sch.bind(i0, "blockIdx.x")
    sch.bind(i1, "threadIdx.x")
    lowered = lower(sch.func)

    def path_to(name):
        def find(s, loops):
            if isinstance(s, Allocate) and s.buffer.name == name:
                return loops
            for child in (getattr(s, "body", None), *getattr(s, "stmts", ())):
                if child is not None and not isinstance(child, tuple):
                    got = find(child, loops + ((s.thread,) if isinstance(s, For) else ()))
                    if got is not None:
                        return got
            return None

        return find(lowered.body, ())

    assert path_to("b_shared") == ("blockIdx.x",)
    assert path_to("matmul_local") == ("blockIdx.x", "threadIdx.x")
    assert any(isinstance(n, Allocate) for n in walk(lowered.body))


def test_multi_level_tiling_with_unit_factors() -> None:
    dims = {"m": 16, "n": 32, "k": 24}
    for ti, tj in (([2, 1, 8, 1], [1, 2, 1, 16]), ([1, 4, 1, 4], [2, 2, 2, 4])):
        sch = Schedule(MATMUL.build(dims))
        blk = sch.get_block("matmul")
        wb = sch.cache_write(blk, 0, "local")
        i, j, k = sch.get_loops(blk)
        i0, i1, i2, i3 = sch.split(i, ti)
        j0, j1, j2, j3 = sch.split(j, tj)
        k0, k1 = sch.split(k, [None, 4])
        sch.reorder(i0, j0, i1, j1, k0, i2, j2, k1, i3, j3)
        sch.reverse_compute_at(wb, j1)
        sch.decompose_reduction(blk, k0)
        sch.vectorize(j3)
        sch.parallel(i0)
        check_against_reference(sch, MATMUL, dims)


def test_vectorized_reduction_becomes_simd_reduction() -> None:
    dims = {"m": 7, "n": 13, "k": 77}
    sch = Schedule(DENSE.build(dims))
    blk = sch.get_block("dense")
    _i, _j, k = sch.get_loops(blk)
    msg = _assert_unchanged(sch, lambda: sch.vectorize(k))
    assert "decompose_reduction first" in msg
    sch.decompose_reduction(blk, k)
    _k0, k1 = sch.split(k, [None, 16])  # imperfect: the guard moves into the update
    sch.vectorize(k1)
    src = build_source(sch).source
    assert "#pragma omp simd reduction(+:" in src
    check_against_reference(sch, DENSE, dims)
    sch = Schedule(SOFTMAX.build({"m": 7, "n": 129}))
    mx = sch.get_block("softmax_max")
    _, k = sch.get_loops(mx)
    sch.decompose_reduction(mx, k)
    sch.vectorize(k)
    assert "reduction(max:" in build_source(sch).source
    check_against_reference(sch, SOFTMAX, {"m": 7, "n": 129})
