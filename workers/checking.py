"""Correctness checks: dtype storage, output poisoning and comparison with the numpy reference.

A kernel's output buffers are filled with NaN (or a sentinel for integers) before the checked
run, so an element the kernel never wrote fails the comparison instead of passing silently.
"""

from __future__ import annotations

import numpy as np

_TOLERANCE = {
    "float64": 1e-9,
    "float32": 1e-5,
    "float16": 1e-2,
    "bfloat16": 2e-2,
}

_STORAGE = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,  # numpy has no bfloat16: keep the raw 16 bits
    "int64": np.int64,
    "int32": np.int32,
    "int16": np.int16,
    "uint32": np.uint32,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.uint8,
}

INT_POISON = 0x5A


class UnsupportedDtypeError(ValueError):
    """A dtype the runners cannot store or compare."""


def default_tolerance(dtype: str) -> float:
    """Relative tolerance by dtype (fp32 ~1e-5, fp16/bf16 ~1e-2); integers must match exactly."""
    return _TOLERANCE.get(dtype, 0.0)


def storage_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds a kernel buffer of `dtype` bit for bit."""
    try:
        return np.dtype(_STORAGE[dtype])
    except KeyError:
        raise UnsupportedDtypeError(f"unsupported dtype {dtype!r}") from None


def to_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """Convert a host array to the contiguous bits a kernel of `dtype` reads.

    bfloat16 values given as uint16 are taken as bit patterns already (the op library's form).
    """
    if dtype == "bfloat16":
        if np.asarray(array).dtype == np.uint16:
            return np.ascontiguousarray(array)
        bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)  # round to nearest even
        return (rounded >> 16).astype(np.uint16)
    return np.ascontiguousarray(array, dtype=storage_dtype(dtype))


def from_storage(array: np.ndarray, dtype: str) -> np.ndarray:
    """Read a kernel buffer of `dtype` back as float64 (floats) or int64 (integers)."""
    if dtype == "bfloat16":
        return (array.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float64)
    return array.astype(np.int64)


def poison(array: np.ndarray, dtype: str) -> None:
    """Fill an output buffer so unwritten elements are detected: NaN for floats."""
    if dtype == "bfloat16":
        array.fill(0x7FC0)  # a bfloat16 quiet NaN
    elif np.issubdtype(array.dtype, np.floating):
        array.fill(np.nan)
    else:
        array.fill(INT_POISON)


CHUNK = 1 << 18  # elements per comparison block: the temporaries stay in cache


def reference_scale(reference: np.ndarray) -> float:
    """max |ref| (at least the smallest positive float), the denominator of the error."""
    ref = np.asarray(reference)
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return max(scale, float(np.finfo(np.float64).tiny))


def relative_error(output: np.ndarray, reference: np.ndarray) -> float:
    """Max |out - ref| scaled by max |ref|; inf when any output is NaN/inf or shapes differ.

    Scaling by the largest reference magnitude (not element by element) keeps
    cancellation near zero from failing a correct reduction.
    """
    return compare(output, reference, 0.0)[0]


def count_mismatches(output: np.ndarray, reference: np.ndarray, rtol: float) -> int:
    """How many elements are non-finite or farther than `rtol * max|ref|` from the reference."""
    return compare(output, reference, rtol)[1]


def compare(
    output: np.ndarray, reference: np.ndarray, rtol: float, scale: float | None = None
) -> tuple[float, int]:
    """(relative error, elements out of tolerance), block by block.

    float32 outputs against a float32 reference are compared in float32 (their difference
    is exact when close); anything else in float64.
    """
    out = np.asarray(output).reshape(-1)
    ref = np.asarray(reference).reshape(-1)
    if out.shape != ref.shape:
        return float("inf"), max(out.size, ref.size)
    if out.size == 0:
        return 0.0, 0
    if scale is None:
        scale = reference_scale(ref)
    work = np.float32 if out.dtype == ref.dtype == np.float32 else np.float64
    limit = work(rtol * scale)
    block = np.empty(min(CHUNK, out.size), work)
    worst, good = 0.0, 0
    for start in range(0, out.size, CHUNK):
        o, r = out[start : start + CHUNK], ref[start : start + CHUNK]
        diff = block[: o.size]
        np.subtract(o, r, out=diff, casting="unsafe")
        np.abs(diff, out=diff)
        peak = float(diff.max())
        if not np.isfinite(peak):
            worst = float("inf")
        elif peak > worst:
            worst = peak
        good += int(np.count_nonzero(diff <= limit))  # NaN compares false: counted bad
    return (worst / scale if np.isfinite(worst) else float("inf")), out.size - good


def compare_outputs(
    outputs: list[np.ndarray] | tuple[np.ndarray, ...],
    dtypes: list[str] | tuple[str, ...],
    references: list[np.ndarray] | tuple[np.ndarray, ...],
    rtol: float,
    scales: list[float] | tuple[float, ...] | None = None,
) -> tuple[float, int]:
    """Largest relative error over all outputs and the number of elements out of tolerance."""
    worst, bad = 0.0, 0
    for index, (out, dtype, ref) in enumerate(zip(outputs, dtypes, references, strict=True)):
        value = out if dtype in ("float32", "float16", "float64") else from_storage(out, dtype)
        scale = None if scales is None else scales[index]
        err, count = compare(value, ref, rtol, scale)
        worst, bad = max(worst, err), bad + count
    return worst, bad
