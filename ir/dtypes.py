"""Element types of the IR: names, sizes, numpy equivalents and how values combine."""

from __future__ import annotations

import numpy as np

FLOAT_TYPES = ("float32", "float16", "bfloat16")
INT_TYPES = ("int64", "uint32", "int32", "int8")
STORAGE_TYPES = ("float32", "float16", "bfloat16", "int8", "int32", "uint32", "int64")
ALL_TYPES = (*STORAGE_TYPES, "bool")

_BYTES = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int8": 1,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "bool": 1,
}

_NUMPY = {
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.uint16,  # bf16 travels as its raw 16-bit pattern; numpy has no bfloat16
    "int8": np.int8,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "bool": np.bool_,
}


class DTypeError(ValueError):
    """An unknown dtype name or an operation the dtypes do not allow."""


def check_dtype(dtype: str) -> str:
    """Return `dtype` if known, else raise a DTypeError naming the known ones."""
    if dtype not in _BYTES:
        raise DTypeError(f"unknown dtype {dtype!r}; known: {', '.join(ALL_TYPES)}")
    return dtype


def itemsize(dtype: str) -> int:
    """Bytes per element."""
    return _BYTES[check_dtype(dtype)]


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype host arrays use for `dtype` (uint16 bit patterns for bfloat16)."""
    return np.dtype(_NUMPY[check_dtype(dtype)])


def is_float(dtype: str) -> bool:
    """True for float32, float16 and bfloat16."""
    return dtype in FLOAT_TYPES


def is_int(dtype: str) -> bool:
    """True for the integer element types (int64 included)."""
    return dtype in INT_TYPES


_RANK = {"int8": 0, "int32": 1, "uint32": 2, "int64": 3, "bfloat16": 4, "float16": 5, "float32": 6}


def promote(a: str, b: str) -> str:
    """The dtype of a binary arithmetic result: floats beat ints, wider beats narrower."""
    if a == b:
        return a
    if a == "bool" or b == "bool":
        raise DTypeError(f"cannot combine {a} and {b} arithmetically")
    return a if _RANK[a] >= _RANK[b] else b


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16) to float32 values."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (nearest even) and return the uint16 bit patterns."""
    # in place on one uint32 copy: a model's weights are billions of values. The sum wraps
    # only for negative NaN patterns >= 0xFFFF8000, which round to 0 as they would unwrapped
    # and truncated to 16 bits.
    u = np.array(values, dtype=np.float32, copy=True).view(np.uint32)
    lsb = u >> 16
    lsb &= 1
    lsb += 0x7FFF
    u += lsb
    u >>= 16
    return u.astype(np.uint16)


def to_float32(array: np.ndarray, dtype: str) -> np.ndarray:
    """Read a host array of `dtype` as float32 values (decoding bf16 bit patterns)."""
    if dtype == "bfloat16":
        return bf16_to_f32(array)
    return np.asarray(array).astype(np.float32)


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """Store float32 values as a host array of `dtype` (bf16 as rounded bit patterns)."""
    if dtype == "bfloat16":
        return f32_to_bf16(values)
    return np.asarray(values).astype(numpy_dtype(dtype))
