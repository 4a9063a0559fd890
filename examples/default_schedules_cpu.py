"""Time the untuned default CPU schedule of some ops against numpy, in the same run.

    python examples/default_schedules_cpu.py

The shapes are the CPU reference workloads of the project (GEMV as decode's dense, rmsnorm,
softmax) plus a prefill-sized dense. This is the baseline tuning starts from.
"""

from __future__ import annotations

import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from tunefleet.ir import build_source, default_schedule, ops

CASES = [
    ("dense", {"m": 1, "n": 4096, "k": 4096}, "float32"),
    ("dense", {"m": 128, "n": 1024, "k": 1024}, "float32"),
    ("rmsnorm", {"m": 32, "n": 4096}, "float32"),
    ("softmax", {"m": 256, "n": 2048}, "float32"),
    ("silu_mul", {"m": 32, "n": 14336}, "float32"),
]


def numpy_version(name: str):
    """The plain numpy way of computing the op (what a user would write)."""
    if name == "dense":
        return lambda x, w: x @ w.T
    if name == "rmsnorm":
        return lambda x, w: x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * w
    if name == "softmax":

        def softmax(x):
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)

        return softmax
    if name == "silu_mul":
        return lambda g, u: g / (1.0 + np.exp(-g)) * u
    raise KeyError(name)


def median_time(fn, repeat: int = 20, rounds: int = 5) -> float:
    fn()
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        out.append((time.perf_counter() - start) / repeat)
    return statistics.median(out)


def main() -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for idx, (name, dims, dtype) in enumerate(CASES):
            op = ops.get_op(name)
            ks = build_source(default_schedule(op.build(dims, dtype)))
            src, lib = Path(tmp) / f"k{idx}.c", Path(tmp) / f"k{idx}.so"
            src.write_text(ks.source)
            subprocess.run(
                [
                    "gcc",
                    "-O3",
                    "-march=native",
                    "-fopenmp",
                    "-shared",
                    "-fPIC",
                    "-o",
                    str(lib),
                    str(src),
                ],
                check=True,
            )
            fn = getattr(ctypes.CDLL(str(lib)), ks.entry)
            fn.restype = None
            inputs = op.make_inputs(dims, dtype, rng)
            out = np.empty(op.reference(*inputs).shape, dtype=np.float32)
            ptrs = [a.ctypes.data_as(ctypes.c_void_p) for a in (*inputs, out)]
            fn(*ptrs)
            np.testing.assert_allclose(out, op.reference(*inputs), rtol=1e-3, atol=1e-3)
            ref = numpy_version(name)
            ours = median_time(lambda fn=fn, ptrs=ptrs: fn(*ptrs))
            theirs = median_time(lambda ref=ref, inputs=inputs: ref(*inputs))
            shape = ",".join(f"{k}={v}" for k, v in dims.items())
            print(
                f"{name:<9} {shape:<22} default {ours * 1e3:8.3f} ms   numpy {theirs * 1e3:8.3f} ms"
                f"   speed-up {theirs / ours:5.2f}x"
            )


if __name__ == "__main__":
    main()
