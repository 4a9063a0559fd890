"""Kernel backends: one class per device kind loads a compiled model's binaries and calls
them, and says where a session's buffers live. The CPU backend loads the shared libraries
with ctypes and keeps buffers in numpy; the CUDA backend (runtime/cuda_backend.py) loads
cubins and keeps buffers on the GPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunefleet.runtime.errors import RuntimeModelError
from tunefleet.runtime.manifest import KernelArg, KernelEntry
from tunefleet.workers.launch import evaluate

# call(buffers, dims, launch_dims=None): run a kernel on buffers (in parameter order) at
# dims; `launch_dims` (CUDA graph capture) sizes its launch for the largest dims it will serve
KernelCall = Callable[..., None]


class GraphUnsafe(Exception):
    """A kernel whose launch changes between the dims a CUDA graph would serve (its grid
    grows with the kv length, say): the step runs without a graph."""


class Backend(ABC):
    """Loads kernels of one target kind and runs them on the backend's buffers.

    `xp` is the array module of those buffers (numpy here, cupy on the GPU): sessions
    allocate with it and copy within it, so the engine's data movement is the same code on
    every device."""

    kind: str
    xp: Any = np
    has_graphs = False  # whether `capture` records graphs
    shared_limit: int | None = None  # shared bytes a kernel's block may use (None: no limit)

    def __init__(self, threads: int | None = None) -> None:
        """`threads`: host threads a kernel may use (backends without host threads ignore it)."""
        self.threads = threads

    @abstractmethod
    def load(self, model_dir: Path, kernel: KernelEntry) -> KernelCall:
        """A callable running `kernel` on buffers (in parameter order) at dims."""

    def to_device(self, array: np.ndarray) -> Any:
        """`array` where the kernels can read it (the array itself on the CPU)."""
        return array

    def to_host(self, array: Any) -> np.ndarray:
        """A buffer's values as a numpy array (the array itself on the CPU)."""
        return np.asarray(array)

    def upload(self, dst: Any, values: np.ndarray) -> None:
        """Host `values` into the start of buffer `dst` (no allocation on the device)."""
        dst[: values.size] = values.reshape(-1)

    def synchronize(self) -> None:
        """Wait for every kernel launched so far (a no-op where calls are synchronous)."""
        return None

    def active(self) -> contextlib.AbstractContextManager[Any]:
        """The context a session's calls run in: on the GPU, this backend's stream made
        current, so the array module's own kernels (copies, argmax) join its launches even
        when another model's backend was made later in the process."""
        return contextlib.nullcontext()

    def set_dims(self, dims: Mapping[str, int]) -> None:
        """The sizes of the next forward pass, for kernels that read them from memory (a
        no-op where kernels take them as arguments)."""
        return None

    def decode_moves(self, plan: Any, cfg: Any) -> DecodeMoves:
        """The decode step's position-dependent copies on this backend's buffers."""
        return DecodeMoves(plan, cfg)

    def capture(self, forward: Callable[[], None]) -> Any:
        """`forward`'s launches captured as a graph to `replay`; None where there are no
        graphs (the CPU): the caller runs `forward` itself."""
        return None

    def replay(self, graph: Any) -> None:
        """Launch a graph made by `capture`."""
        raise NotImplementedError(f"the {self.kind} backend has no graphs")


class DecodeMoves:
    """The copies of a decode step that depend on the position: the rope rows of position
    `pos` and each token's key and value into the cache at `pos` (the attention reads the
    cache's first rows as they stand). Done here by slicing the backend's arrays at the
    host's `pos`; the CUDA backend reads it from the dims array instead, so a captured graph
    serves every step."""

    def __init__(self, plan: Any, cfg: Any) -> None:
        self.plan = plan
        self.h, self.kv, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def rope_rows(self, t: int, pos: int) -> None:
        """cos and sin of position `pos` for each of `t` tokens."""
        pl, half = self.plan, self.d // 2
        pl.cos[: t * half].reshape(t, half)[:] = pl.cos_table[pos]
        pl.sin[: t * half].reshape(t, half)[:] = pl.sin_table[pos]

    def append_kv(self, layer: int, qkv: Any, t: int, pos: int) -> None:
        """The keys and values of `qkv[t, H, d]` into layer `layer`'s cache at `pos`."""
        pl, h, kv = self.plan, self.h, self.kv
        pl.k_cache[layer][pos, :t] = qkv[:, h : h + kv]
        pl.v_cache[layer][pos, :t] = qkv[:, h + kv :]


class CpuBackend(Backend):
    """C kernels (OpenMP) from shared libraries, called through ctypes with the buffers'
    addresses and the dims as int64 scalars. `threads` sets OpenMP's thread count for the
    kernels this thread calls (None: OpenMP's default, every core); on cores other
    processes keep busy, fewer threads avoid waiting at every kernel's barrier."""

    kind = "cpu"

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(threads)
        self._libs: dict[str, ctypes.CDLL] = {}
        path = ctypes.util.find_library("gomp")
        # OpenMP stays loaded for as long as any kernel may run
        self._openmp = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL) if path else None
        if threads is not None:
            if threads < 1:
                raise RuntimeModelError(f"threads must be at least 1, got {threads}")
            if self._openmp is None:
                raise RuntimeModelError("cannot set the thread count: no OpenMP runtime found")
            self._openmp.omp_set_num_threads(ctypes.c_int(threads))

    def load(self, model_dir: Path, kernel: KernelEntry) -> KernelCall:
        path = str((model_dir / kernel.binary).resolve())
        lib = self._libs.get(path)
        if lib is None:
            try:
                lib = self._libs[path] = ctypes.CDLL(path)
            except OSError as err:
                raise RuntimeModelError(f"cannot load kernel {kernel.binary}: {err}") from None
        try:
            fn = getattr(lib, kernel.entry)
        except AttributeError:
            raise RuntimeModelError(f"{kernel.binary} has no kernel {kernel.entry!r}") from None
        buffers = [a for a in kernel.args if a.kind == "buffer"]
        scalars = [a.name for a in kernel.args if a.kind == "scalar"]
        fn.argtypes = [ctypes.c_void_p] * len(buffers) + [ctypes.c_int64] * len(scalars)
        fn.restype = None
        last: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

        def call(
            arrays: Sequence[np.ndarray], dims: Mapping[str, int], launch_dims: Any = None
        ) -> None:
            values = tuple(int(dims[s]) for s in scalars)
            seen = (values, tuple(a.size for a in arrays))
            if not last or last[0] != seen:  # the guard, again whenever the shapes change
                check_buffers(kernel, buffers, arrays, dims)
                last[:] = [seen]
            # the address through __array_interface__: `ndarray.ctypes` keeps memory per call
            fn(*(a.__array_interface__["data"][0] for a in arrays), *values)

        return call


def check_buffers(
    kernel: KernelEntry,
    specs: Sequence[KernelArg],
    arrays: Sequence[Any],
    dims: Mapping[str, int],
) -> None:
    """Each buffer holds, contiguously, at least the elements its argument shape needs at
    `dims`; RuntimeModelError names the buffer otherwise."""
    if len(arrays) != len(specs):
        raise RuntimeModelError(
            f"kernel {kernel.entry} takes {len(specs)} buffers, got {len(arrays)}"
        )
    for spec, arr in zip(specs, arrays, strict=True):
        need = 1
        for d in spec.shape:
            need *= evaluate(d, dims)
        if arr.size < need or not arr.flags.c_contiguous:
            raise RuntimeModelError(
                f"kernel {kernel.entry}: buffer {spec.name} needs {need} contiguous elements "
                f"at {dict(dims)}, got {arr.size}"
            )


def backend_for(kind: str, threads: int | None = None) -> Backend:
    """The backend running kernels of target kind `kind` (`threads`: see CpuBackend)."""
    if kind == "cpu":
        return CpuBackend(threads)
    if kind == "cuda":  # imported here: cupy is needed only to run on a GPU
        from tunefleet.runtime.cuda_backend import CudaBackend

        return CudaBackend(threads)
    raise RuntimeModelError(f"no runtime for target kind {kind!r}; this build runs cpu and cuda")
