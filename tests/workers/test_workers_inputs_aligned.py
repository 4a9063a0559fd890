"""Measured kernels see 64-byte aligned buffers, whatever numpy's allocator hands out."""

from __future__ import annotations

import numpy as np

from tunefleet.ir.codegen import KernelArg
from tunefleet.workers.inputs import ALIGN_BYTES, aligned, aligned_empty, prepare
from tunefleet.workers.results import MeasureConfig, Problem


def test_aligned_copy_keeps_values_shape_and_dtype() -> None:
    rng = np.random.default_rng(0)
    for shape, dtype in (((1024, 1024), np.float32), ((3, 7), np.float16), ((5,), np.int8)):
        src = rng.standard_normal(shape).astype(dtype)
        out = aligned(src)
        assert out.ctypes.data % ALIGN_BYTES == 0
        assert out.flags.c_contiguous and out.shape == src.shape and out.dtype == src.dtype
        np.testing.assert_array_equal(out, src)


def test_aligned_empty_has_the_shape_dtype_and_alignment_asked() -> None:
    for shape, dtype in (((1024, 1024), np.float32), ((3, 7), np.uint16), ((5,), np.float64)):
        out = aligned_empty(shape, dtype)
        assert out.ctypes.data % ALIGN_BYTES == 0
        assert out.flags.c_contiguous and out.shape == shape and out.dtype == dtype
    assert aligned_empty((0, 4), np.float32).shape == (0, 4)  # no data to align


def test_prepared_sets_are_aligned() -> None:
    # numpy puts a 4 MiB float32 array 16 bytes past a page: unaligned without the copy
    dims = {"m": 1024, "n": 256, "k": 1024}
    problem = Problem.create("dense", dims, "float32")
    args = [
        KernelArg("x", "buffer", "float32", (1024, 1024)),
        KernelArg("w", "buffer", "float32", (256, 1024)),
        KernelArg("y", "buffer", "float32", (1024, 256)),
    ]
    data = prepare(problem, args, MeasureConfig(rotate_inputs=True), cache_bytes=8 << 20)
    assert len(data.sets) >= 2
    for buffers in data.sets:
        assert [b.ctypes.data % ALIGN_BYTES for b in buffers] == [0, 0, 0]
