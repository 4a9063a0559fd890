"""The CUDA backend: a compiled model's cubins loaded with cupy, its buffers on the GPU.

cupy holds the session's buffers and does the engine's copies (transposes, prefill's cache
writes) as device kernels, so a step moves no activation through the host; each of our
kernels is a `RawModule` function launched on the backend's stream with the grid, block and
dynamic shared bytes of its manifest entry, evaluated at the call's dims. Kernels read the
dims from a small device array (`set_dims`), and the decode step's position-dependent copies
are kernels that read it too (`CudaDecodeMoves`), so one decode step captured as a CUDA
graph replays at every later position. Launches are asynchronous: `synchronize` waits for
them (timings must).

Imported only when a CUDA model is loaded, so everything else runs without cupy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunefleet.runtime.backend import (
    Backend,
    DecodeMoves,
    GraphUnsafe,
    KernelCall,
    check_buffers,
)
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import DIM_SLOTS, KernelEntry
from tunefleet.workers.launch import LaunchExprError, evaluate, evaluate_all

STATIC_SHARED_LIMIT = 48 * 1024  # above this a kernel must opt in to more dynamic shared memory


class CudaBackend(Backend):
    """Cubins through cupy on CUDA device 0 (`threads` is ignored: kernels use no host
    threads)."""

    kind = "cuda"
    has_graphs = True

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(threads)
        try:
            import cupy
        except ImportError:
            raise RuntimeModelError(
                "running a CUDA model needs cupy: pip install cupy-cuda13x (or the "
                "cupy wheel matching this machine's CUDA)"
            ) from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError:
            count = 0
        if count == 0:
            raise RuntimeModelError(
                "no CUDA device found: this compiled model runs on an NVIDIA GPU with its driver"
            )
        self.xp = cupy
        try:  # what a block may opt in to (227 KB on sm_90); unknown: no check
            props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
            self.shared_limit = int(props["sharedMemPerBlockOptin"])
        except (KeyError, TypeError, ValueError, cupy.cuda.runtime.CUDARuntimeError):
            self.shared_limit = None
        self._modules: dict[str, Any] = {}
        # every launch and copy names this stream of ours, and sessions run with it current
        # (`active`): graphs cannot capture the legacy default stream, and a backend made
        # later in the process (another model) must not draw a capture's launches away
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.stream.use()
        self.dims = cupy.zeros(len(DIM_SLOTS), dtype=cupy.int64)
        self._dims_host = np.zeros(len(DIM_SLOTS), dtype=np.int64)
        self._capturing = False

    def to_device(self, array: np.ndarray) -> Any:
        return self.xp.asarray(array)

    def to_host(self, array: Any) -> np.ndarray:
        if isinstance(array, self.xp.ndarray):  # after this backend's launches, not another's
            return self.xp.asnumpy(array, stream=self.stream)
        return np.asarray(array)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def active(self) -> Any:
        return self.stream  # a cupy stream is a context manager making itself current

    def upload(self, dst: Any, values: np.ndarray) -> None:
        # one copy from pageable memory: staged before it returns, so `values` may change
        dst[: values.size].set(np.ascontiguousarray(values.reshape(-1), dst.dtype), self.stream)

    def set_dims(self, dims: Mapping[str, int]) -> None:
        for i, name in enumerate(DIM_SLOTS):
            self._dims_host[i] = dims.get(name, 1)
        self.dims.set(self._dims_host, stream=self.stream)

    def decode_moves(self, plan: Any, cfg: Any) -> DecodeMoves:
        return CudaDecodeMoves(plan, cfg, self)

    def capture(self, forward: Callable[[], None]) -> Any:
        """`forward` captured on the backend's stream and instantiated; GraphUnsafe (after
        the capture is ended and dropped) when a kernel cannot serve the graph's sizes."""
        self.stream.begin_capture()
        self._capturing = True
        try:
            with self.stream:  # what cupy launches itself (copies) is captured too
                forward()
        finally:
            self._capturing = False
            graph = self.stream.end_capture()
        return graph

    def replay(self, graph: Any) -> None:
        graph.launch(self.stream)

    def load(self, model_dir: Path, kernel: KernelEntry) -> KernelCall:
        if kernel.launch is None:
            raise RuntimeModelError(
                f"{kernel.binary} has no launch configuration in the manifest; compile the "
                "model again for cuda"
            )
        path = str((model_dir / kernel.binary).resolve())
        module = self._modules.get(path)
        if module is None:
            try:
                module = self._modules[path] = self.xp.RawModule(path=path)
            except Exception as err:  # cupy raises driver errors of several classes
                raise RuntimeModelError(f"cannot load kernel {kernel.binary}: {err}") from None
        try:
            fn = module.get_function(kernel.entry)
        except Exception:  # cupy's driver error for a missing symbol
            raise RuntimeModelError(f"{kernel.binary} has no kernel {kernel.entry!r}") from None
        buffers = [a for a in kernel.args if a.kind == "buffer"]
        scalars = [a.name for a in kernel.args if a.kind == "scalar"]
        launch = kernel.launch
        in_memory = launch.dim_slots is not None and bool(scalars)
        if launch.dim_slots is not None and tuple(launch.dim_slots) != DIM_SLOTS:
            raise RuntimeModelError(
                f"{kernel.binary} reads dims {list(launch.dim_slots)}, this runtime writes "
                f"{list(DIM_SLOTS)}; compile the model again"
            )
        configs: dict[tuple[int, ...], tuple[tuple[int, ...], tuple[int, ...], int]] = {}
        checked: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
        raised = [0]  # the dynamic shared bytes the function was opted in to

        def configure(values: tuple[int, ...], dims: Mapping[str, int]):
            try:
                grid = evaluate_all(launch.grid, dims)
                block = evaluate_all(launch.block, dims)
                shared = evaluate(launch.shared_bytes, dims)
            except LaunchExprError as err:
                raise RuntimeModelError(f"kernel {kernel.entry}: {err}") from None
            if shared > STATIC_SHARED_LIMIT and shared > raised[0]:
                fn.max_dynamic_shared_size_bytes = shared
                raised[0] = shared
            configs[values] = (grid, block, shared)
            return configs[values]

        def call(
            arrays: Sequence[Any], dims: Mapping[str, int], launch_dims: Any = None
        ) -> None:
            values = tuple(int(dims[s]) for s in scalars)
            seen = (values, tuple(a.size for a in arrays))
            if not checked or checked[0] != seen:  # the guard, again whenever shapes change
                check_buffers(kernel, buffers, arrays, dims)
                checked[:] = [seen]
            grid, block, shared = configs.get(values) or configure(values, dims)
            if in_memory:
                written = tuple(int(self._dims_host[DIM_SLOTS.index(s)]) for s in scalars)
                if written != values:
                    raise RuntimeModelError(
                        f"kernel {kernel.entry} runs at {dict(zip(scalars, values, strict=True))}"
                        f" but the dims array holds {written}; set_dims before the call"
                    )
            if launch_dims is not None and in_memory:  # a graph: room for its largest sizes
                top = tuple(int(launch_dims[s]) for s in scalars)
                check_buffers(kernel, buffers, arrays, launch_dims)
                grid_top, block_top, shared_top = configs.get(top) or configure(top, launch_dims)
                if (grid_top, block_top) != (grid, block):
                    raise GraphUnsafe(kernel.entry)
                shared = max(shared, shared_top)
                if shared > STATIC_SHARED_LIMIT and shared > raised[0]:
                    fn.max_dynamic_shared_size_bytes = shared
                    raised[0] = shared
            args = (self.dims,) if in_memory else tuple(np.int64(v) for v in values)
            fn(grid, block, (*arrays, *args), shared_mem=shared, stream=self.stream)

        return call


# the decode step's position-dependent copies, reading the position from the dims array
# ({m}: its slot of m); U is the copy unit, the widest dividing a row's bytes
_MOVES = r"""
typedef {unit} U;
extern "C" __global__ void tf_rope_rows(const float* __restrict__ cos_table,
    const float* __restrict__ sin_table, float* __restrict__ cos, float* __restrict__ sin,
    const long long* __restrict__ dims, int rows, int half) {{
  const long long pos = dims[{m}] - 1;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < rows * half) {{
    cos[i] = cos_table[pos * half + i % half];
    sin[i] = sin_table[pos * half + i % half];
  }}
}}
// qkv [t, H, row] -> k_cache, v_cache [max_len, batch, kv, row] at pos; blockIdx.y: token
// and kv head, blockIdx.z: key or value
extern "C" __global__ void tf_append_kv(const U* __restrict__ qkv, U* __restrict__ k_cache,
    U* __restrict__ v_cache, const long long* __restrict__ dims, int heads, int kv, int big,
    int batch, int row) {{
  const long long pos = dims[{m}] - 1;
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  const int tok = blockIdx.y / kv, head = blockIdx.y % kv;
  if (u >= row) return;
  const U* src = qkv + ((long long)tok * big + heads + blockIdx.z * kv + head) * row;
  U* dst = (blockIdx.z ? v_cache : k_cache) + ((pos * batch + tok) * kv + head) * row;
  dst[u] = src[u];
}}
"""

_UNITS = ((16, "uint4"), (8, "uint2"), (4, "unsigned int"), (2, "unsigned short"))
_THREADS = 256


class CudaDecodeMoves(DecodeMoves):
    """DecodeMoves as kernels that read the position from the backend's dims array,
    launched with fixed sizes, so a captured decode step replays at any position."""

    def __init__(self, plan: Any, cfg: Any, backend: CudaBackend) -> None:
        super().__init__(plan, cfg)
        self.backend = backend
        row_bytes = self.d * plan.k_cache.itemsize
        size, unit = next((n, u) for n, u in _UNITS if row_bytes % n == 0)
        self.row = row_bytes // size
        module = backend.xp.RawModule(code=_MOVES.format(unit=unit, m=DIM_SLOTS.index("m")))
        self._rope = module.get_function("tf_rope_rows")
        self._append = module.get_function("tf_append_kv")
        self.big = self.h + 2 * self.kv

    def rope_rows(self, t: int, pos: int) -> None:
        pl, half = self.plan, self.d // 2
        blocks = (t * half + _THREADS - 1) // _THREADS
        args = (pl.cos_table, pl.sin_table, pl.cos, pl.sin, self.backend.dims, np.int32(t),
                np.int32(half))  # fmt: skip
        self._rope((blocks,), (_THREADS,), args, stream=self.backend.stream)

    def append_kv(self, layer: int, qkv: Any, t: int, pos: int) -> None:
        pl = self.plan
        grid = ((self.row + 31) // 32, t * self.kv, 2)
        sizes = (self.h, self.kv, self.big, pl.batch, self.row)
        args = (qkv, pl.k_cache[layer], pl.v_cache[layer], self.backend.dims)
        args += tuple(np.int32(v) for v in sizes)
        self._append(grid, (32,), args, stream=self.backend.stream)
