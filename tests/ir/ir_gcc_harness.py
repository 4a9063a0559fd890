"""Tests-only harness: compile KernelSource with gcc and call it through ctypes."""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tunefleet.ir import ops
from tunefleet.ir.codegen import KernelSource, build_source
from tunefleet.ir.dtypes import numpy_dtype, to_float32
from tunefleet.ir.expr import Const, Var
from tunefleet.ir.simplify import simplify
from tunefleet.ir.visit import substitute

_CACHE_DIR = Path(tempfile.gettempdir()) / f"tunefleet-ir-tests-{os.getuid()}"
_LOADED: dict[str, ctypes.CDLL] = {}


def compile_kernel(ks: KernelSource) -> ctypes._CFuncPtr:
    """gcc -O2 -fopenmp -shared -fPIC the source (cached by content) and return the entry."""
    digest = hashlib.sha256(ks.source.encode()).hexdigest()[:24]
    if digest not in _LOADED:
        _CACHE_DIR.mkdir(parents=True, exist_ok=True)
        src = _CACHE_DIR / f"{digest}.c"
        lib = _CACHE_DIR / f"{digest}.so"
        if not lib.exists():
            src.write_text(ks.source)
            tmp = lib.with_suffix(f".{os.getpid()}.tmp.so")
            res = subprocess.run(
                [
                    "gcc",
                    "-O2",
                    "-march=native",
                    "-fopenmp",
                    "-shared",
                    "-fPIC",
                    "-o",
                    str(tmp),
                    str(src),
                    "-lm",
                ],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                raise RuntimeError(f"gcc failed:\n{res.stderr}\n--- source ---\n{ks.source}")
            tmp.replace(lib)
        _LOADED[digest] = ctypes.CDLL(str(lib))
    fn = getattr(_LOADED[digest], ks.entry)
    fn.restype = None
    return fn


def shape_of(ks_shape: Sequence[object], dims: Mapping[str, int]) -> tuple[int, ...]:
    out = []
    for s in ks_shape:
        if isinstance(s, int):
            out.append(s)
            continue
        env = {v: Const(int(dims[v.name]), "int64") for v in _vars(s)}
        val = simplify(substitute(s, env))
        assert isinstance(val, Const), f"unbound dims in {s}"
        out.append(int(val.value))
    return tuple(out)


def _vars(e: object) -> list[Var]:
    from tunefleet.ir.visit import free_vars

    return free_vars(e)


def run_kernel(
    ks: KernelSource, inputs: Sequence[np.ndarray], dims: Mapping[str, int]
) -> list[np.ndarray]:
    """Call the kernel on `inputs`; outputs are allocated (poisoned) here and returned."""
    fn = compile_kernel(ks)
    buffers = ks.buffer_args
    arrays: list[np.ndarray] = []
    for i, arg in enumerate(buffers):
        shp = shape_of(arg.shape, dims)
        if i < len(inputs):
            arr = np.ascontiguousarray(inputs[i])
            assert arr.shape == shp, (arg.name, arr.shape, shp)
            assert arr.dtype == numpy_dtype(arg.dtype), (arg.name, arr.dtype, arg.dtype)
        else:
            arr = np.empty(shp, dtype=numpy_dtype(arg.dtype))
            if arr.dtype.kind == "f":
                arr.fill(np.nan)
            else:
                arr.fill(0x7FC1 if arg.dtype == "bfloat16" else 0x55)
        arrays.append(arr)
    args = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
    args += [ctypes.c_int64(int(dims[a.name])) for a in ks.scalar_args]
    fn.argtypes = [ctypes.c_void_p] * len(arrays) + [ctypes.c_int64] * len(ks.scalar_args)
    fn(*args)
    return arrays[len(inputs) :]


def check_against_reference(
    target: object,
    op: ops.OpDef,
    dims: Mapping[str, int],
    dtype: str = "float32",
    seed: int = 0,
    **attrs: object,
) -> None:
    """Build `target` (PrimFunc or Schedule), run it on random inputs, compare with numpy."""
    ks = build_source(target)
    inputs = op.make_inputs(dims, dtype, np.random.default_rng(seed), **attrs)
    (out,) = run_kernel(ks, inputs, dims)
    got = to_float32(out, dtype)
    want = op.reference(*inputs, **attrs)
    rtol, atol = ops.tolerance(dtype)
    np.testing.assert_allclose(
        got, want, rtol=rtol, atol=atol * max(1.0, float(np.abs(want).max()))
    )
