"""A hand-written GPU schedule for fp16 rmsnorm in one kernel, bound by memory bandwidth.

    python examples/rmsnorm_cuda.py               # the generated CUDA C and its launch
    python examples/rmsnorm_cuda.py --show-ir     # the scheduled IR
    python bench/gpu_kernels.py                   # checks and times it against PyTorch

One thread block per row: its threads sum the squares of the row with 16-byte loads and
combine the partial sums (warp shuffles, then shared memory across warps) into a shared
scalar; after a barrier the same threads scale the row, reading x and the weight 16 bytes at
a time and writing the output 16 bytes at a time. The row is read twice, but its second
read hits the L2 cache, so device memory sees one read of x and one write of y.
"""

from __future__ import annotations

import argparse

from tunefleet.ir import Schedule, build_source, ops


def rmsnorm_schedule(m: int = 2048, n: int = 4096, threads: int = 256) -> Schedule:
    """rmsnorm(x[m, n], weight[n]) in fp16: a row per block, 8 halves per thread and step."""
    func = ops.get_op("rmsnorm").build({"m": m, "n": n}, "float16")
    sch = Schedule(func)
    out = sch.get_block("rmsnorm")
    sumsq = sch.get_block("rmsnorm_sumsq")
    i, j = sch.get_loops(out)
    j0, j1, j2 = sch.split(j, [None, threads, 8])
    sch.bind(i, "blockIdx.x")
    sch.bind(j1, "threadIdx.x")
    sch.unroll(j0)
    sch.vectorize(j2)  # 128-bit loads of x and weight, a 128-bit store of y
    sch.compute_at(sumsq, i)  # the row's sum of squares, under the row's block...
    sch.set_scope(sumsq, 0, "shared")  # ...kept in shared memory for all its threads
    k = sch.get_loops(sumsq)[-1]
    k0, k1, k2 = sch.split(k, [None, threads, 8])
    sch.reorder(k1, k0, k2)
    sch.bind(k1, "threadIdx.x")  # all threads share the row: a cross-thread reduction
    sch.unroll(k0)
    sch.unroll(k2)  # 128-bit loads of x
    return sch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--m", type=int, default=2048)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--show-ir", action="store_true")
    args = parser.parse_args()
    sch = rmsnorm_schedule(args.m, args.n)
    if args.show_ir:
        print(sch.func.script())
    else:
        ks = build_source(sch, target="cuda")
        print(ks.source)
        print(ks.launch_comment)


if __name__ == "__main__":
    main()
