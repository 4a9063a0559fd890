"""Every op's default GPU schedule against numpy on a real GPU, through the workers' runner
(odd shapes, all three dtypes, symbolic dims bound at launch), plus the hand GEMV schedule."""

from __future__ import annotations

import pytest

from tunefleet.ir import Var, build_source, ops
from tunefleet.workers.builder import BuildConfig, BuildInput, build
from tunefleet.workers.results import MeasureConfig, Problem, RunInput, Status
from tunefleet.workers.runner import Runner, RunnerConfig
from tunefleet.workers.targets import resolve_target

pytestmark = pytest.mark.gpu

FAST = MeasureConfig(guard_noise=False, warmup_ms=1, repeats=3, min_repeat_ms=0.2, timeout_s=20)


def _odd(op: ops.OpDef) -> dict[str, int]:
    special = {("q4_dense", "k"): 64, ("rope", "d"): 6, ("batch_matmul", "h"): 4}
    return {p: special.get((op.name, p), 77 if p == "n" else 7) for p in op.params}


def _cases() -> list[tuple[str, dict[str, int], str, tuple[str, ...]]]:
    out = []
    for op in ops.list_ops():
        for dtype in ("float32", "float16", "bfloat16"):
            out.append((op.name, _odd(op), dtype, ()))
        shape = dict(op.example)
        if op.name in ("dense", "matmul", "q4_dense"):
            shape["m"] = 3
        out.append((op.name, shape, "float16", (op.params[0],)))
    # reductions long enough for a warp per output, at lengths no vector width divides
    for dtype in ("float32", "float16", "bfloat16"):
        out.append(("dense", {"m": 3, "n": 77, "k": 1000}, dtype, ()))
    out.append(("dense", {"m": 5, "n": 77, "k": 4096}, "bfloat16", ("m",)))
    out.append(("q4_dense", {"m": 2, "n": 77, "k": 512}, "float16", ()))
    out.append(("batch_matmul", {"b": 1, "h": 4, "m": 3, "n": 77, "k": 264}, "float16", ()))
    return out


@pytest.fixture(scope="module")
def gpu(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cuda-kernels"))
    with Runner(RunnerConfig(device="cuda", device_index=0, cache_dir=cache)) as runner:
        yield resolve_target("cuda"), runner, BuildConfig(cache_dir=cache, timeout_s=120)


@pytest.mark.parametrize(("name", "shape", "dtype", "symbolic"), _cases())
def test_default_cuda_schedule_matches_numpy(gpu, name, shape, dtype, symbolic) -> None:
    target, runner, config = gpu
    dims = {p: (Var(p) if p in symbolic else v) for p, v in shape.items()}
    func = ops.get_op(name).build(dims, dtype)
    built = build(BuildInput(target, workload=func), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create(name, shape, dtype), FAST))
    assert result.status is Status.OK, result.message


def test_hand_gemv_schedule_matches_numpy(gpu) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from gemv_cuda import gemv_schedule

    target, runner, config = gpu
    shape = {"m": 1, "n": 1024, "k": 4096}
    built = build(BuildInput(target, kernel=build_source(gemv_schedule(**shape), "cuda")), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create("dense", shape, "float16"), FAST))
    assert result.status is Status.OK, result.message


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_tensor_core_dense_matches_numpy(gpu, dtype) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_tc_schedule

    target, runner, config = gpu
    shape = {"m": 256, "n": 384, "k": 192}
    ks = build_source(dense_tc_schedule(**shape, dtype=dtype), "cuda")
    built = build(BuildInput(target, kernel=ks), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create("dense", shape, dtype), FAST))
    assert result.status is Status.OK, result.message


@pytest.mark.parametrize(
    ("stages", "k", "warps", "tile_k"),
    [(2, 192, (2, 2), 64), (3, 320, (2, 4), 64), (4, 192, (2, 4), 32), (6, 128, (2, 2), 32)],
)
def test_pipelined_tensor_core_dense_matches_numpy(gpu, stages, k, warps, tile_k) -> None:
    """cp.async multi-stage pipelines, including more stages than k steps (4 steps, 6 stages)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_tc_schedule

    target, runner, config = gpu
    shape = {"m": 256, "n": 384, "k": k}
    sch = dense_tc_schedule(**shape, tile_k=tile_k, warps=warps, stages=stages)
    built = build(BuildInput(target, kernel=build_source(sch, "cuda")), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create("dense", shape, "float16"), FAST))
    assert result.status is Status.OK, result.message


@pytest.mark.parametrize(("rows", "min_blocks"), [(4, None), (4, 8), (1, 32), (8, 4)])
def test_hoisted_gemv_matches_numpy(gpu, rows, min_blocks) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from gemv_cuda import gemv_schedule

    target, runner, config = gpu
    shape = {"m": 1, "n": 1024, "k": 2048}
    sch = gemv_schedule(**shape, rows_per_block=rows, hoist=True, min_blocks=min_blocks)
    built = build(BuildInput(target, kernel=build_source(sch, "cuda")), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create("dense", shape, "float16"), FAST))
    assert result.status is Status.OK, result.message


@pytest.mark.parametrize(
    ("dtype", "op", "tile", "warps", "tile_k", "stages", "k", "prefetch"),
    [
        ("float16", "dense", (128, 256), (2, 4), 64, 3, 384, True),
        ("bfloat16", "dense", (128, 256), (2, 4), 64, 3, 192, True),
        ("float16", "dense", (128, 256), (2, 4), 32, 4, 192, True),
        ("bfloat16", "dense", (128, 256), (2, 4), 32, 4, 192, False),
        ("float16", "dense", (128, 128), (2, 2), 64, 3, 320, False),
        ("float16", "dense", (128, 256), (2, 4), 64, 3, 128, True),  # 2 k steps, 3 stages
        ("float16", "dense", (128, 256), (2, 4), 64, 4, 320, True),
        ("bfloat16", "dense", (128, 256), (2, 4), 64, 2, 192, True),
        ("float16", "dense", (128, 256), (2, 4), 128, 2, 384, True),
        ("float16", "dense", (256, 128), (4, 2), 64, 3, 192, False),
        ("float16", "dense", (256, 128), (4, 2), 64, 4, 448, True),  # the example's default
        ("bfloat16", "dense", (256, 128), (4, 2), 64, 4, 448, True),
        ("float16", "dense", (256, 128), (4, 2), 64, 3, 448, True),
        ("float16", "dense", (256, 128), (4, 2), 32, 6, 224, True),
        ("bfloat16", "dense", (128, 128), (2, 2), 32, 6, 96, True),
        ("float16", "matmul", (128, 256), (2, 4), 32, 4, 192, True),
        ("bfloat16", "matmul", (128, 128), (2, 2), 64, 2, 192, False),
        ("bfloat16", "matmul", (128, 128), (2, 2), 64, 3, 256, True),
    ],
)
def test_mma_sync_dense_matches_numpy(
    gpu, dtype, op, tile, warps, tile_k, stages, k, prefetch
) -> None:
    """ldmatrix (.trans for matmul's k-major b) + mma.sync m16n8k16, pipelined (with the
    fragments loaded one 16-wide step ahead when `prefetch`), vs numpy; the fp32 staging tile
    padded by 8 floats (the default) except with 32-wide k steps."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_mma_schedule

    target, runner, config = gpu
    shape = {"m": 256, "n": 512, "k": k}
    sch = dense_mma_schedule(
        **shape,
        dtype=dtype,
        tile_k=tile_k,
        warps=warps,
        stages=stages,
        tile=tile,
        op=op,
        out_pad=0 if tile_k == 32 else 8,
        prefetch=prefetch,
    )
    built = build(BuildInput(target, kernel=build_source(sch, "cuda")), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create(op, shape, dtype), FAST))
    assert result.status is Status.OK, result.message


@pytest.mark.parametrize(("dtype", "raster"), [("float16", 2), ("bfloat16", 8)])
def test_rasterized_mma_dense_matches_numpy(gpu, dtype, raster) -> None:
    """Renumbered blocks (groups of `raster` row tiles; 3 row tiles, so a short last group or
    one group larger than the grid) still cover every tile of y once."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
    from dense_tensorcore_cuda import dense_mma_schedule

    target, runner, config = gpu
    shape = {"m": 768, "n": 512, "k": 256}
    sch = dense_mma_schedule(**shape, dtype=dtype, stages=4, raster=raster)
    built = build(BuildInput(target, kernel=build_source(sch, "cuda")), config)
    assert built.status is Status.OK, built.message
    result = runner.run(RunInput(built.artifact, Problem.create("dense", shape, dtype), FAST))
    assert result.status is Status.OK, result.message
