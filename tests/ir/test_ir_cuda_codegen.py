"""CUDA code generation: every op's default GPU schedule compiles with nvcc (no GPU needed),
launch descriptions, barriers, cross-thread reductions, vector access and the GPU primitives."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tunefleet.ir import (
    CodegenError,
    Schedule,
    ScheduleError,
    Trace,
    Var,
    build_source,
    default_schedule,
    ops,
)
from tunefleet.ir.errors import LoweringError
from tunefleet.ir.gpu_interpreter import interpret
from tunefleet.ir.gpu_launch import launch_text
from tunefleet.ir.simplify import simplify
from tunefleet.workers.checking import compare_outputs, default_tolerance

NVCC = shutil.which("nvcc")
ARCHS = ("sm_80", "sm_90")


def _odd(op: ops.OpDef) -> dict[str, int]:
    special = {
        ("q4_dense", "k"): 64,
        ("rope", "d"): 6,
        ("batch_matmul", "h"): 4,
        ("batch_matmul", "b"): 2,
    }
    return {p: special.get((op.name, p), 77 if p == "n" else 7) for p in op.params}


def _cases() -> list[tuple[str, str, str, dict]]:
    cases = []
    for op in ops.list_ops():
        odd = _odd(op)
        first, last = op.params[0], op.params[-1]
        cases.append((op.name, "float16", "odd", odd))
        cases.append((op.name, "float32", f"{first}=?", {**op.example, first: Var(first)}))
        sym_last = {**op.example, "n": Var("n")} if "n" in op.params else dict(op.example)
        if op.name == "batch_matmul":
            sym_last = {**op.example, "m": Var("m")}
        cases.append((op.name, "bfloat16", f"{last}-ish=?", sym_last))
    return cases


CASES = _cases()


def _compile(source: str, arch: str) -> tuple[int, str]:
    with tempfile.TemporaryDirectory(prefix="tf-nvcc-") as tmp:
        src = Path(tmp) / "k.cu"
        src.write_text(source)
        cmd = [NVCC, "-cubin", f"-arch={arch}", "-O3", "-o", str(Path(tmp) / "k.cubin"), str(src)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        return r.returncode, r.stderr[-2000:]


@pytest.fixture(scope="module")
def compiled() -> dict[tuple[str, str, str], tuple[int, str]]:
    """Generate every case, then compile them two at a time (for sm_90; sm_80 for a few)."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    jobs = {}
    for name, dtype, label, shape in CASES:
        func = ops.get_op(name).build(shape, dtype)
        ks = build_source(default_schedule(func, target="cuda"), target="cuda")
        jobs[(name, dtype, label)] = (ks.source, "sm_90")
    for name in ("dense", "softmax"):
        func = ops.get_op(name).build(_odd(ops.get_op(name)), "bfloat16")
        ks = build_source(default_schedule(func, target="cuda"), target="cuda")
        jobs[(name, "bfloat16", "sm_80")] = (ks.source, "sm_80")
    with ThreadPoolExecutor(2) as pool:
        results = pool.map(lambda job: _compile(*job), jobs.values())
        return dict(zip(jobs, results, strict=True))


@pytest.mark.parametrize(("name", "dtype", "label"), [c[:3] for c in CASES])
def test_default_cuda_schedule_of_every_op_compiles(compiled, name, dtype, label) -> None:
    rc, log = compiled[(name, dtype, label)]
    assert rc == 0, log


def test_sm80_builds_compile_too(compiled) -> None:
    for key in (("dense", "bfloat16", "sm_80"), ("softmax", "bfloat16", "sm_80")):
        rc, log = compiled[key]
        assert rc == 0, log


def test_launch_is_described_with_symbolic_dims() -> None:
    m = Var("m")
    func = ops.get_op("rmsnorm").build({"m": m, "n": 4096}, "float16")
    ks = build_source(default_schedule(func, target="cuda"), target="cuda")
    assert ks.lang == "cuda" and ks.entry == "rmsnorm_kernel"
    assert ks.grid == ("m", 1, 1) and ks.block == (256, 1, 1) and ks.shared_bytes == 0
    assert [a.name for a in ks.args] == ["x", "weight", "rmsnorm", "m"]
    func = ops.get_op("add").build({"m": 3, "n": Var("n")}, "float32")
    ks = build_source(default_schedule(func, target="cuda"), target="cuda")
    from tunefleet.workers.launch import evaluate

    for n in (1, 255, 256, 257, 1000):
        assert (
            evaluate(ks.grid[0], {"n": n}) * 256
            >= 3 * n
            > (evaluate(ks.grid[0], {"n": n}) - 1) * 256
        )


def test_launch_text_is_what_the_workers_evaluate() -> None:
    from tunefleet.workers.launch import evaluate

    n = Var("n")
    e = simplify((n * 3 + 127) // 128)
    for value in (1, 100, 4097):
        assert evaluate(launch_text(e), {"n": value}) == (value * 3 + 127) // 128


def test_row_reduction_is_cross_thread_with_a_barrier_before_its_readers() -> None:
    func = ops.get_op("softmax").build({"m": 5, "n": 300}, "float32")
    src = build_source(default_schedule(func, target="cuda"), target="cuda").source
    body = src.split("softmax_kernel(", 1)[1]
    assert body.count("tf_block_max(") == 1 and body.count("tf_block_add(") == 1
    assert "__shared__" in body and body.count("__syncthreads();") >= 2
    # the shared results are written by thread 0 only, after the combine
    assert "if ((v_k_r_1 == 0))" in body or "== 0)" in body


def _rows_per_thread(k: int = 256, rows: object = 3) -> tuple[Schedule, ops.OpDef, dict]:
    """A dense whose block reads each weight once for all its rows: lanes split k, and
    every lane keeps a partial sum per row (the rows' loop inside the thread axis)."""
    opdef = ops.get_op("dense")
    dims = {"m": rows, "n": 40, "k": k}
    sch = Schedule(opdef.build(dims, "float16"))
    acc = sch.get_block("dense_acc")
    i, j, kk = sch.get_loops(acc)
    k0, lane = sch.split(kk, [None, 32])
    sch.reorder(j, lane, i, k0)
    sch.bind(j, "blockIdx.x")
    sch.bind(lane, "threadIdx.x")
    sch.reverse_compute_at(sch.get_block("dense"), j)
    sch.set_scope(acc, 0, "local")
    return sch, opdef, dims


def test_a_thread_reduces_several_rows_at_once() -> None:
    sch, opdef, dims = _rows_per_thread()
    body = build_source(sch, target="cuda").source.split("dense_kernel(", 1)[1]
    # one accumulator per row, each combined over the lanes; the rows share the loop
    assert "dense_acc_red[3]" in body
    assert "dense_acc_red[tf_r1] = tf_block_add(dense_acc_red[tf_r1], 32, nullptr);" in body
    inputs = opdef.make_inputs(dims, "float16", np.random.default_rng(0))
    (out,) = interpret(sch.mod, inputs)
    ref = opdef.reference(*inputs)
    assert compare_outputs([out], ["float16"], [ref], default_tolerance("float16"))[1] == 0
    if NVCC is not None:
        rc, err = _compile(build_source(sch, target="cuda").source, "sm_90")
        assert rc == 0, err


def test_rows_of_symbolic_count_inside_the_thread_axis_are_refused() -> None:
    sch, _, _ = _rows_per_thread(rows=Var("m"))
    with pytest.raises(LoweringError, match="needs a constant extent"):
        build_source(sch, target="cuda")


def _gemv_schedule(n: int = 512, k: int = 1024) -> Schedule:
    func = ops.get_op("dense").build({"m": 1, "n": n, "k": k}, "float16")
    sch = Schedule(func)
    out = sch.get_block("dense")
    acc = sch.get_block("dense_acc")
    _i, j = sch.get_loops(out)
    j0, j1 = sch.split(j, [None, 4])
    sch.bind(j0, "blockIdx.x")
    sch.bind(j1, "threadIdx.y")
    sch.compute_at(acc, j1)
    sch.set_scope(acc, 0, "local")
    kk = sch.get_loops(acc)[-1]
    k0, k1, k2 = sch.split(kk, [None, 32, 8])
    sch.reorder(k1, k0, k2)
    sch.bind(k1, "threadIdx.x")
    sch.unroll(k2)
    return sch


def test_vectorized_contiguous_loads_become_128_bit() -> None:
    sch = _gemv_schedule()
    ks = build_source(sch, target="cuda")
    assert ks.block == (32, 4, 1) and ks.grid == (128, 1, 1)
    assert ks.source.count("*(const uint4*)(w + ") == 1
    assert ks.source.count("*(const uint4*)(x + ") == 1
    assert "tf_block_add(" in ks.source
    # replaying the trace (set_scope and bind included) gives the same program
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert replayed.func == sch.func
    assert "set_scope" in sch.trace.as_python()


def test_misaligned_runs_stay_scalar() -> None:
    func = ops.get_op("add").build({"m": 3, "n": 12}, "float16")
    sch = Schedule(func)
    i, j = sch.get_loops(sch.get_block("add"))
    sch.bind(i, "blockIdx.x")
    j0, j1 = sch.split(j, [None, 8])  # row length 12: row starts are not 16-byte aligned
    sch.bind(j0, "threadIdx.x")
    sch.vectorize(j1)
    src = build_source(sch, target="cuda").source
    assert "uint4" not in src and "#pragma unroll 8" in src


def test_binding_rules() -> None:
    func = ops.get_op("rmsnorm").build({"m": 4, "n": 64}, "float32")
    sch = Schedule(func)
    blk = sch.get_block("rmsnorm_sumsq")
    _i, k = sch.get_loops(blk)
    with pytest.raises(ScheduleError, match="race"):
        sch.bind(k, "blockIdx.x")  # blocks cannot combine partial sums
    sch.bind(k, "threadIdx.x")  # threads can: a cross-thread reduction
    with pytest.raises(ScheduleError, match="parameters stay global"):
        sch.set_scope(sch.get_block("rmsnorm"), 0, "shared")
    with pytest.raises(ScheduleError, match="unknown storage scope"):
        sch.set_scope(blk, 0, "texture")


def test_unplaceable_global_intermediate_is_a_clear_error() -> None:
    func = ops.get_op("rmsnorm").build({"m": 4, "n": 64}, "float32")
    sch = Schedule(func)
    for name in ("rmsnorm_sumsq", "rmsnorm"):
        loops = sch.get_loops(sch.get_block(name))
        sch.bind(loops[0], "blockIdx.x")
    with pytest.raises(CodegenError, match="global memory"):
        build_source(sch, target="cuda")


def test_large_shared_tiles_use_dynamic_shared_memory() -> None:
    func = ops.get_op("matmul").build({"m": 128, "n": 128, "k": 128}, "float32")
    sch = Schedule(func)
    blk = sch.get_block("matmul")
    b_sh = sch.cache_read(blk, 1, "shared")  # all of B is read under each row: 64 KB
    i, j, _k = sch.get_loops(blk)
    sch.bind(i, "blockIdx.x")
    sch.bind(j, "threadIdx.x")
    sch.compute_at(b_sh, i)
    ks = build_source(sch, target="cuda")
    assert ks.shared_bytes == 128 * 128 * 4
    assert "extern __shared__" in ks.source and "__syncthreads();" in ks.source


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
def test_shared_rows_of_symbolic_length_are_dynamic_with_a_launch_expression() -> None:
    """The fused decode attention's default keeps a row of `m` scores and probabilities in
    shared memory: both go to dynamic memory after the constant arrays, and the launch's
    dynamic bytes are an expression the workers evaluate at each kv length."""
    from tunefleet.coordinator.graph import Phase
    from tunefleet.coordinator.models import ModelConfig
    from tunefleet.coordinator.tasks import model_tasks
    from tunefleet.workers.launch import evaluate

    cfg = ModelConfig(name="t", family="llama", hidden_size=64, intermediate_size=96,
                      num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=100,
                      dtype="float16")  # fmt: skip
    task = next(t for t in model_tasks(cfg, Phase.DECODE) if t.kind == "attention")
    assert "m" in task.symbolic
    ks = build_source(default_schedule(task.func, target="cuda"), target="cuda")
    assert isinstance(ks.shared_bytes, str) and "m" in ks.shared_bytes
    const = evaluate(ks.shared_bytes, {"b": 1, "m": 0})  # the constant arrays alone
    for m in (1, 333, 4096):  # a row of fp16 probabilities and of fp32 scores, 128-aligned
        rows = -(-m * 2 // 128) * 128 + -(-m * 4 // 128) * 128
        assert evaluate(ks.shared_bytes, {"b": 1, "m": m}) == const + rows
    assert "(tf_dyn_smem + " in ks.source and "* m" not in ks.source.split("tf_dyn_smem[]")[0]
    code, err = _compile(ks.source, "sm_90")
    assert code == 0, err


def _tc_schedule(dtype: str = "float16") -> Schedule:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_tc_schedule

    return dense_tc_schedule(256, 256, 64, dtype, warps=(2, 2), stages=1)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensorized_dense_compiles_to_wmma(dtype) -> None:
    sch = _tc_schedule(dtype)
    ks = build_source(sch, target="cuda")
    assert ks.block == (32, 2, 2) and ks.grid == (2, 2, 1)
    # above 48 KB: dynamic; the float32 staging tile of y reuses the bytes of the x / w tiles
    assert ks.shared_bytes == max(128 * 128 * 4, 2 * 128 * 72 * 2)
    src = ks.source
    assert src.count("nvcuda::wmma::mma_sync(") == 1 and "fill_fragment" in src
    assert "store_matrix_sync" in src and "fragment<nvcuda::wmma::accumulator" in src
    rc, log = _compile(src, "sm_80")
    assert rc == 0, log
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert replayed.func == sch.func and "tensorize" in sch.trace.as_python()


def _mma_schedule(dtype: str = "float16", op: str = "dense", prefetch: bool = True) -> Schedule:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_mma_schedule

    return dense_mma_schedule(
        256, 512, 96, dtype, tile_k=32, stages=3, op=op, tile=(128, 256), warps=(2, 4),
        prefetch=prefetch,
    )  # fmt: skip


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize(
    ("dtype", "op", "arch", "prefetch"),
    [
        ("float16", "dense", "sm_80", True),
        ("float16", "dense", "sm_90", True),
        ("float16", "dense", "sm_90", False),
        ("bfloat16", "dense", "sm_90", True),
        ("bfloat16", "matmul", "sm_80", True),
        ("bfloat16", "matmul", "sm_90", False),
    ],
)
def test_mma_sync_dense_compiles_and_replays(dtype, op, arch, prefetch) -> None:
    """ldmatrix fragments in registers feed mma.sync; the schedule replays from JSON exactly."""
    sch = _mma_schedule(dtype, op, prefetch)
    ks = build_source(sch, target="cuda")
    assert ks.block == (32, 4, 2) and ks.grid == (2, 2, 1)
    src = ks.source
    ty = {"float16": "f16", "bfloat16": "bf16"}[dtype]
    # per 16-wide k step a warp's 64 x 64 tile: 4 + 4 ldmatrix.x4 and 4 x 4 x 2 mma.sync; with
    # prefetch both 16-wide steps of the 32-wide k tile are written out, plus the first loads
    steps = 2 if prefetch else 1
    assert src.count(f"mma.sync.aligned.m16n8k16.row.col.f32.{ty}.{ty}.f32") == 2 * steps
    assert src.count("ldmatrix.sync.aligned.m8n8.x4") == 2 * steps + 2 * prefetch
    frags = "unsigned x_mma_matrix_a[8][4];" if op == "dense" else "unsigned a_mma_matrix_a[8][4];"
    assert (frags in src) == prefetch  # two register copies of a warp's 4 a tiles
    assert ("ldmatrix.sync.aligned.m8n8.x4.trans" in src) == (op == "matmul")
    assert "float dense_acc_mma_accumulator[16][8];" in src or op == "matmul"
    assert "nvcuda::wmma" not in src and "cp.async.cg" in src
    rc, log = _compile(src, arch)
    assert rc == 0, log
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert replayed.func == sch.func
    assert build_source(replayed, target="cuda").source == src


def test_mma_sync_tensorize_checks_operand_scopes() -> None:
    """The register MMA wants fragments from ldmatrix, not the shared tiles themselves."""
    func = ops.get_op("dense").build({"m": 32, "n": 32, "k": 32}, "float16")
    sch = Schedule(func)
    acc = sch.get_block("dense_acc")
    sch.cache_write(acc, 0, "mma.accumulator")
    i, j, k = sch.get_loops(acc)
    i0, i1 = sch.split(i, [None, 16])
    j0, j1 = sch.split(j, [None, 16])
    k0, k1 = sch.split(k, [None, 16])
    sch.reorder(i0, j0, k0, i1, j1, k1)
    sch.decompose_reduction(acc, k0)
    with pytest.raises(ScheduleError, match=r"mma\.accumulator"):
        sch.tensorize(i1, "mma_m16n8k16_f16_f32")  # a and b are still global buffers
    with pytest.raises(ScheduleError, match="accumulator"):
        sch.tensorize(i1, "wmma_mma_f16_f32")  # the accumulator is not a WMMA fragment
    frag = sch.cache_read(acc, 0, "mma.matrix_a")
    sch.compute_at(frag, k0)
    with pytest.raises(ScheduleError, match="from shared memory"):
        sch.tensorize(sch.get_loops(frag)[-2], "ldmatrix_a_x4")  # copies from global


def test_tensorize_checks_the_nest() -> None:
    func = ops.get_op("dense").build({"m": 32, "n": 32, "k": 32}, "float16")
    sch = Schedule(func)
    acc = sch.get_block("dense_acc")
    i, _j, _k = sch.get_loops(acc)
    with pytest.raises(ScheduleError, match="extents"):
        sch.tensorize(i, "wmma_mma_f16_f32")  # 32 x 32 x 32, not 16 x 16 x 16
    with pytest.raises(ScheduleError, match="unknown tensor intrinsic"):
        sch.tensorize(i, "mma_m99")
    i0, i1 = sch.split(i, [None, 16])
    j0, j1 = sch.split(sch.get_loops(acc)[2], [None, 16])
    k0, k1 = sch.split(sch.get_loops(acc)[4], [None, 16])
    sch.reorder(i0, j0, k0, i1, j1, k1)
    with pytest.raises(ScheduleError, match=r"wmma\.accumulator"):
        sch.tensorize(i1, "wmma_mma_f16_f32")  # a global float32 buffer, with its init
    assert [ins.kind for ins in sch.trace.insts].count("tensorize") == 0


def test_storage_align_pads_shared_rows() -> None:
    sch = _tc_schedule("float16")
    src = build_source(sch, target="cuda").source
    # 64-half rows padded to 72: fragment loads use the padded leading dimension
    loads = [line for line in src.splitlines() if "load_matrix_sync" in line]
    assert len(loads) == 2 and all(line.endswith(", 72);") for line in loads)
    func = ops.get_op("dense").build({"m": 32, "n": 32, "k": 32}, "float16")
    s = Schedule(func)
    tile = s.cache_read(s.get_block("dense_acc"), 0, "shared")
    with pytest.raises(ScheduleError, match="axis must be 0"):
        s.storage_align(tile, 0, 1, 32, 8)
    with pytest.raises(ScheduleError, match="offset < factor"):
        s.storage_align(tile, 0, 0, 8, 8)
    with pytest.raises(ScheduleError, match="parameter"):
        s.storage_align(s.get_block("dense"), 0, 0, 32, 8)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_block_rasterize_renumbers_blocks_and_replays(arch) -> None:
    """Before: blockIdx_y = blockIdx.y. After: the block loops read the renumbered tf_by /
    tf_bx (groups of 4 row tiles); the annotation replays from JSON exactly."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_mma_schedule

    plain = build_source(dense_mma_schedule(1024, 512, 128), "cuda").source
    assert "const int64_t blockIdx_y = (int64_t)blockIdx.y;" in plain and "tf_by" not in plain
    sch = dense_mma_schedule(1024, 512, 128, raster=4)
    src = build_source(sch, "cuda").source
    assert "const int64_t blockIdx_y = tf_by;" in src and "const int64_t blockIdx_x = tf_bx;" in src
    assert "tf_lin / (4 * (int64_t)gridDim.x) * 4" in src
    rc, log = _compile(src, arch)
    assert rc == 0, log
    replayed = Trace.from_json(sch.trace.to_json()).apply(sch.original)
    assert build_source(replayed, "cuda").source == src


def test_block_rasterize_needs_a_two_dimensional_grid() -> None:
    sch = default_schedule(ops.get_op("gelu").build({"m": 64, "n": 4096}, "float32"), target="cuda")
    loop = sch.get_loops(sch.get_block("gelu"))[0]
    sch.annotate(loop, "block_rasterize", 4)
    with pytest.raises(CodegenError, match=r"launched over blockIdx\.x and blockIdx\.y"):
        build_source(sch, "cuda")
