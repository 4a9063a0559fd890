"""The CUDA backend: a compiled model's cubins loaded with cupy, its buffers on the GPU.

cupy holds the session's buffers and does the engine's copies (kv-cache writes, staging,
transposes) as device kernels, so a step moves no activation through the host; each of our
kernels is a `RawModule` function launched on the current stream with the grid, block and
dynamic shared bytes of its manifest entry, evaluated at the call's dims. Launches are
asynchronous: `synchronize` waits for them (timings must).

Imported only when a CUDA model is loaded, so everything else runs without cupy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunefleet.runtime.backend import Backend, KernelCall, check_buffers
from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import KernelEntry
from tunefleet.workers.launch import LaunchExprError, evaluate, evaluate_all

STATIC_SHARED_LIMIT = 48 * 1024  # above this a kernel must opt in to more dynamic shared memory


class CudaBackend(Backend):
    """Cubins through cupy on CUDA device 0 (`threads` is ignored: kernels use no host
    threads)."""

    kind = "cuda"

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
        self._modules: dict[str, Any] = {}

    def to_device(self, array: np.ndarray) -> Any:
        return self.xp.asarray(array)

    def to_host(self, array: Any) -> np.ndarray:
        return self.xp.asnumpy(array) if isinstance(array, self.xp.ndarray) else np.asarray(array)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

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

        def call(arrays: Sequence[Any], dims: Mapping[str, int]) -> None:
            values = tuple(int(dims[s]) for s in scalars)
            seen = (values, tuple(a.size for a in arrays))
            if not checked or checked[0] != seen:  # the guard, again whenever shapes change
                check_buffers(kernel, buffers, arrays, dims)
                checked[:] = [seen]
            grid, block, shared = configs.get(values) or configure(values, dims)
            fn(grid, block, (*arrays, *(np.int64(v) for v in values)), shared_mem=shared)

        return call
