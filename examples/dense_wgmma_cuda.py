"""fp16 / bf16 dense on Hopper warpgroup MMA (wgmma, sm_90a), scheduled in the IR.

    python examples/dense_wgmma_cuda.py                  # the kernel and its launch
    python examples/dense_wgmma_cuda.py --show-ir        # the scheduled IR
    python examples/dense_wgmma_cuda.py --bench          # on an H100: check and time vs torch

y[i, j] = sum_k x[i, k] * w[j, k]. Each thread block computes a (64 * warpgroups) x n tile of
y; each warpgroup of 128 threads keeps its 64 x n share in registers. For every 64-wide step
of k the block's threads copy the x and w tiles into shared memory with cp.async, 16 bytes a
thread, in the 128-byte swizzled layout (`storage_swizzle`) that wgmma reads through its
matrix descriptors; `stages` copies are in flight (software pipeline). Each warpgroup then
issues four `wgmma.mma_async.m64n{n}k16` as one group and waits for them. The accumulators
go through a shared float32 tile to y, converted and 16 bytes a thread.
See ir/wgmma_schedule.py and ir/intrinsics_wgmma.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tunefleet.ir import Schedule, build_source, ops
from tunefleet.ir.wgmma_schedule import apply_wgmma_tiling

WARPGROUPS, N, STAGES = 2, 128, 3  # 128 x 128 tiles: 96 KiB of stages, two blocks per SM


def dense_wgmma_schedule(
    m: int = 2048,
    n: int = 4096,
    k: int = 4096,
    dtype: str = "float16",
    warpgroups: int = WARPGROUPS,
    tile_n: int = N,
    stages: int = STAGES,
) -> Schedule:
    """dense(x[m, k], w[n, k]) with wgmma; m a multiple of 64 * warpgroups, n of tile_n,
    k of 64."""
    func = ops.get_op("dense").build({"m": m, "n": n, "k": k}, dtype)
    sch = Schedule(func)
    apply_wgmma_tiling(
        sch, "dense", "dense_acc", dtype, warpgroups=warpgroups, n=tile_n, stages=stages
    )
    return sch


VARIANTS = ((2, 256, 3), (2, 256, 4), (2, 128, 4), (1, 256, 4), (2, 128, 3), (1, 128, 4))


def bench(m: int, n: int, k: int) -> None:
    """Check each variant against a float64 reference and time it beside torch.matmul."""
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from gpu_kernels import Launcher, compile_cubin, rel_err, time_pair

    major, minor = torch.cuda.get_device_capability(0)
    arch = f"sm_{major}{minor}"
    print(torch.cuda.get_device_name(0), arch, flush=True)
    a = torch.randn(m, k, device="cuda", dtype=torch.float16)
    w = torch.randn(n, k, device="cuda", dtype=torch.float16)
    y = torch.empty(m, n, device="cuda", dtype=torch.float16)
    ref = a.double() @ w.double().T
    fns = {"torch.matmul": [lambda: torch.matmul(a, w.T)]}
    errs = {"torch.matmul": rel_err(a @ w.T, ref)}
    with tempfile.TemporaryDirectory() as tmp:
        for wg, tn, st in VARIANTS:
            name = f"wgmma {64 * wg}x{tn} stages{st}"
            try:
                ks = build_source(dense_wgmma_schedule(m, n, k, "float16", wg, tn, st), "cuda")
                launcher = Launcher(ks, compile_cubin(ks.source, arch, Path(tmp), f"v{wg}{tn}{st}"))
            except Exception as err:  # report and go on
                print(f"{name}: {type(err).__name__}: {err}"[:600], flush=True)
                continue
            ours = launcher.bind(a, w, y)
            y.fill_(float("nan"))
            ours()
            torch.cuda.synchronize()
            errs[name] = rel_err(y, ref)
            fns[name] = [ours]
        times = time_pair(fns, reps=10)
    for name, us in times.items():
        tflops = 2 * m * n * k / (us * 1e-6) / 1e12
        print(f"{name:28s} {us:9.1f} us {tflops:7.1f} TFLOP/s  rel_err {errs[name]:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--show-ir", action="store_true")
    parser.add_argument("--bench", action="store_true")
    args = parser.parse_args()
    if args.bench:
        bench(args.m, args.n, args.k)
        return
    sch = dense_wgmma_schedule(args.m, args.n, args.k, args.dtype)
    if args.show_ir:
        print(sch.func.script())
    else:
        ks = build_source(sch, target="cuda")
        print(ks.source)
        print(f"// launch: grid={ks.grid} block={ks.block} dynamic_shared_bytes={ks.shared_bytes}")


if __name__ == "__main__":
    main()
