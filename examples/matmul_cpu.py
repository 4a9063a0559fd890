"""A hand-written CPU schedule for fp32 matmul, timed against numpy in the same run.

    python examples/matmul_cpu.py                 # 1024^3, prints GFLOP/s of both
    python examples/matmul_cpu.py --show-ir       # the scheduled IR
    python examples/matmul_cpu.py --show-source   # the generated C
    python examples/matmul_cpu.py --show-trace    # the schedule as a replayable trace

Steps: define the computation with the tensor-expression frontend, schedule it (a register
tile accumulated in a local buffer, vectorised along j, parallel over column panels), print
the IR, generate C, compile it with gcc -O3 -march=native -fopenmp, check it against numpy
and time both, alternating, taking the median of each.
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tunefleet.ir import compute, create_prim_func, placeholder, reduce_axis, reduce_sum
from tunefleet.ir.codegen import KernelSource, build_source
from tunefleet.ir.schedule import Schedule
from tunefleet.ir.stmt import PrimFunc


def define(n: int) -> PrimFunc:
    """C[i, j] = sum_k A[i, k] * B[k, j] for n x n fp32 matrices."""
    a = placeholder((n, n), "float32", "A")
    b = placeholder((n, n), "float32", "B")
    k = reduce_axis(n, "k")
    c = compute((n, n), lambda i, j: reduce_sum(a[i, k] * b[k, j], k), "C")
    return create_prim_func([a, b, c], name="matmul")


def schedule(func: PrimFunc, rows: int = 8, cols: int = 32) -> Schedule:
    """Tile C into rows x cols register blocks accumulated over the whole k range.

    Each thread owns column panels of B (k x cols, kept hot in L2); for every block of `rows`
    rows it zeroes a local accumulator, adds A[i, k] * B[k, j0:j0+cols] for all k (j
    vectorised, the rows unrolled) and writes the block back to C.
    """
    sch = Schedule(func)
    c = sch.get_block("C")
    write_back = sch.cache_write(c, 0, "local")
    i, j, k = sch.get_loops(c)
    i0, i1 = sch.split(i, [None, rows])
    j0, j1 = sch.split(j, [None, cols])
    sch.reorder(j0, i0, k, i1, j1)
    sch.reverse_compute_at(write_back, i0)
    sch.decompose_reduction(c, k)
    sch.unroll(i1)
    sch.vectorize(j1)
    sch.parallel(j0)
    return sch


def compile_and_load(ks: KernelSource, workdir: Path) -> ctypes._CFuncPtr:
    src, lib = workdir / "matmul.c", workdir / "matmul.so"
    src.write_text(ks.source)
    cmd = [
        "gcc",
        "-O3",
        "-march=native",
        "-fopenmp",
        "-shared",
        "-fPIC",
        "-o",
        str(lib),
        str(src),
        "-lm",
    ]
    subprocess.run(cmd, check=True)
    fn = getattr(ctypes.CDLL(str(lib)), ks.entry)
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * len(ks.args)
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--show-ir", action="store_true")
    parser.add_argument("--show-source", action="store_true")
    parser.add_argument("--show-trace", action="store_true")
    args = parser.parse_args()

    func = define(args.n)
    sch = schedule(func)
    if args.show_ir:
        print(sch.func.script())
    if args.show_trace:
        print(sch.trace.as_python())
    ks = build_source(sch)
    if args.show_source:
        print(ks.source)

    rng = np.random.default_rng(0)
    a = rng.standard_normal((args.n, args.n), dtype=np.float32)
    b = rng.standard_normal((args.n, args.n), dtype=np.float32)
    c = np.full((args.n, args.n), np.nan, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        fn = compile_and_load(ks, Path(tmp))
        ptrs = [x.ctypes.data_as(ctypes.c_void_p) for x in (a, b, c)]
        fn(*ptrs)
        np.testing.assert_allclose(c, a @ b, rtol=1e-3, atol=1e-3 * args.n**0.5)

        def timed(f) -> float:
            f()  # warm-up
            start = time.perf_counter()
            for _ in range(args.repeat):
                f()
            return (time.perf_counter() - start) / args.repeat

        ours, numpys = [], []
        for _ in range(args.rounds):  # alternate so both see the same machine state
            ours.append(timed(lambda: fn(*ptrs)))
            numpys.append(timed(lambda: a @ b))
    flop = 2.0 * args.n**3
    t_ours, t_np = statistics.median(ours), statistics.median(numpys)
    gflops_ours, gflops_np = flop / t_ours / 1e9, flop / t_np / 1e9
    print(
        f"matmul {args.n}^3 fp32: tunefleet {t_ours * 1e3:.2f} ms ({gflops_ours:.1f} GFLOP/s), "
        f"numpy {t_np * 1e3:.2f} ms ({gflops_np:.1f} GFLOP/s), ratio {t_np / t_ours:.2f}"
    )


if __name__ == "__main__":
    main()
