"""Hand-written kernels with known behaviour, to check the measurement pipeline end to end.

Each probe is correct, wrong, fails to compile, faults or hangs on purpose; the runners must
report exactly that and keep going. They also serve the overhead bench and `tunefleet
targets --check`-style smoke tests, independently of the IR's code generation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tunefleet.ir.codegen import KernelArg, KernelSource
from tunefleet.workers.results import Problem


@dataclass(frozen=True)
class ProbeOp:
    """An op with the library's interface: `make_inputs` draws inputs, `reference` checks."""

    name: str
    draw: Callable[[Mapping[str, int], np.random.Generator], list[np.ndarray]]
    ref: Callable[..., np.ndarray]

    def make_inputs(
        self, dims: Mapping[str, int], dtype: str, rng: np.random.Generator, **attrs: Any
    ) -> list[np.ndarray]:
        return [x.astype(dtype) for x in self.draw(dims, rng)]

    def reference(self, *inputs: np.ndarray, **attrs: Any) -> np.ndarray:
        return self.ref(*inputs)


def _draw_vadd(dims: Mapping[str, int], rng: np.random.Generator) -> list[np.ndarray]:
    n = dims["n"]
    return [rng.uniform(0.5, 1.5, n), rng.uniform(-1.5, -0.5, n)]


def _draw_matmul(dims: Mapping[str, int], rng: np.random.Generator) -> list[np.ndarray]:
    m, n, k = dims["m"], dims["n"], dims["k"]
    return [rng.uniform(-1, 1, (m, k)), rng.uniform(-1, 1, (k, n))]


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


# computed in float64 and delivered as float32, as the op library's references are
VECTOR_ADD = ProbeOp("vector_add", _draw_vadd, lambda a, b: (_f64(a) + _f64(b)).astype("float32"))
MATMUL = ProbeOp("matmul", _draw_matmul, lambda a, b: (_f64(a) @ _f64(b)).astype("float32"))


VADD_OP = f"{__name__}:VECTOR_ADD"
MATMUL_OP = f"{__name__}:MATMUL"


def vector_add_problem(n: int, dtype: str = "float32") -> Problem:
    """The problem every vector-add probe is checked against."""
    return Problem.create(VADD_OP, {"n": n}, dtype)


def matmul_problem(m: int, n: int, k: int) -> Problem:
    """The fp32 matmul problem the matmul probes are checked against."""
    return Problem.create(MATMUL_OP, {"m": m, "n": n, "k": k}, "float32")


_VADD_ARGS = (
    KernelArg("a", "buffer", "float32", ("n",)),
    KernelArg("b", "buffer", "float32", ("n",)),
    KernelArg("c", "buffer", "float32", ("n",)),
    KernelArg("n", "scalar", "int64"),
)

_C_VADD = """\
#include <stdint.h>
/* variant %(variant)d */
void vadd(const float* restrict a, const float* restrict b, float* restrict c, int64_t n) {
  #pragma omp parallel for if (n > 262144)
  for (int64_t i = 0; i < n; ++i) {
    %(body)s
  }
}
"""

C_BODIES = {
    "correct": "c[i] = a[i] + b[i];",
    "wrong": "c[i] = a[i] - b[i];",
    "partial": "if (i + 1 < n) c[i] = a[i] + b[i];",  # leaves the last element unwritten
    "hang": "volatile int spin = 1; while (spin) {} c[i] = a[i] + b[i];",
    "segfault": "*(volatile float*)(uintptr_t)(16 + i) = a[i]; c[i] = b[i];",
    "compile_error": "c[i] = a[i] + ;",
}


def c_vector_add(behaviour: str = "correct", variant: int = 0) -> KernelSource:
    """A C vector add that behaves as named in C_BODIES; `variant` changes only a comment."""
    source = _C_VADD % {"variant": variant, "body": C_BODIES[behaviour]}
    return KernelSource(lang="c", source=source, entry="vadd", args=_VADD_ARGS)


_C_MATMUL = """\
#include <stdint.h>
void matmul(const float* restrict A, const float* restrict B, float* restrict C,
            int64_t m, int64_t n, int64_t k) {
  #pragma omp parallel for
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) C[i * n + j] = 0.0f;
    for (int64_t p = 0; p < k; ++p) {
      float a = A[i * k + p];
      for (int64_t j = 0; j < n; ++j) C[i * n + j] += a * B[p * n + j];
    }
  }
}
"""

_MATMUL_ARGS = (
    KernelArg("A", "buffer", "float32", ("m", "k")),
    KernelArg("B", "buffer", "float32", ("k", "n")),
    KernelArg("C", "buffer", "float32", ("m", "n")),
    KernelArg("m", "scalar", "int64"),
    KernelArg("n", "scalar", "int64"),
    KernelArg("k", "scalar", "int64"),
)


def c_matmul() -> KernelSource:
    """A correct fp32 matmul in C (row-major, i-p-j loop order, OpenMP over rows)."""
    return KernelSource(lang="c", source=_C_MATMUL, entry="matmul", args=_MATMUL_ARGS)


_CUDA_VADD = """\
/* variant %(variant)d */
extern "C" __global__ void vadd(const float* __restrict__ a, const float* __restrict__ b,
                                float* __restrict__ c, long long n) {
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    %(body)s
  }
}
"""

CUDA_BODIES = {
    "correct": "c[i] = a[i] + b[i];",
    "wrong": "c[i] = a[i] - b[i];",
    "partial": "if (i + 1 < n) c[i] = a[i] + b[i];",  # leaves the last element unwritten
    # far past the end of the allocation (1 TiB): unmapped, so the launch faults
    "oob_write": "c[i + (1LL << 38)] = a[i] + b[i];",
    "hang": "volatile float* vc = c; while (true) { vc[i] = a[i] + b[i]; }",
    "compile_error": "c[i] = a[i] + ;",
}


def cuda_vector_add(behaviour: str = "correct", variant: int = 0) -> KernelSource:
    """A CUDA vector add (256 threads a block) that behaves as named in CUDA_BODIES."""
    source = _CUDA_VADD % {"variant": variant, "body": CUDA_BODIES[behaviour]}
    return KernelSource(
        lang="cuda",
        source=source,
        entry="vadd",
        args=_VADD_ARGS,
        grid=("ceildiv(n, 256)", 1, 1),
        block=(256, 1, 1),
        shared_bytes=0,
    )


_CUDA_MATMUL = """\
extern "C" __global__ void matmul(const float* __restrict__ A, const float* __restrict__ B,
                                  float* __restrict__ C, long long m, long long n, long long k) {
  __shared__ float As[16][16];
  __shared__ float Bs[16][16];
  long long row = (long long)blockIdx.y * 16 + threadIdx.y;
  long long col = (long long)blockIdx.x * 16 + threadIdx.x;
  float acc = 0.0f;
  for (long long p0 = 0; p0 < k; p0 += 16) {
    As[threadIdx.y][threadIdx.x] =
        (row < m && p0 + threadIdx.x < k) ? A[row * k + p0 + threadIdx.x] : 0.0f;
    Bs[threadIdx.y][threadIdx.x] =
        (p0 + threadIdx.y < k && col < n) ? B[(p0 + threadIdx.y) * n + col] : 0.0f;
    __syncthreads();
    for (int p = 0; p < 16; ++p) acc += As[threadIdx.y][p] * Bs[p][threadIdx.x];
    __syncthreads();
  }
  if (row < m && col < n) C[row * n + col] = acc;
}
"""


def cuda_matmul() -> KernelSource:
    """A correct fp32 matmul in CUDA with 16x16 shared-memory tiles."""
    return KernelSource(
        lang="cuda",
        source=_CUDA_MATMUL,
        entry="matmul",
        args=_MATMUL_ARGS,
        grid=("ceildiv(n, 16)", "ceildiv(m, 16)", 1),
        block=(16, 16, 1),
        shared_bytes=0,
    )
