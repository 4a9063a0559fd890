"""fp16 / bf16 dense on Hopper warpgroup MMA (wgmma, sm_90a), scheduled in the IR.

    python examples/dense_wgmma_cuda.py                  # the kernel and its launch
    python examples/dense_wgmma_cuda.py --show-ir        # the scheduled IR
    python bench/gpu_kernels.py --only dense             # on an H100: checked and timed vs torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--show-ir", action="store_true")
    args = parser.parse_args()
    sch = dense_wgmma_schedule(args.m, args.n, args.k, args.dtype)
    if args.show_ir:
        print(sch.func.script())
    else:
        ks = build_source(sch, target="cuda")
        print(ks.source)
        print(ks.launch_comment)


if __name__ == "__main__":
    main()
