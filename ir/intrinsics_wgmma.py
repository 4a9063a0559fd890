"""Hopper warpgroup MMA (`wgmma.mma_async`, sm_90a) intrinsics and the layout they read.

A warpgroup (128 consecutive threads: bind warpgroups to threadIdx.y and launch threadIdx.x
with 128) multiplies a 64 x 16 tile of a by a 16 x N tile of b, both fp16 / bf16 in shared
memory, into a 64 x N float32 accumulator held in registers (N / 2 floats per thread):

* `wgmma_fill_n{N}`: acc[i, j] = 0 over 64 x N (loops i, j) of a `wgmma.accumulator` buffer;
* `wgmma_m64n{N}k16_f16_f32`, `wgmma_m64n{N}k16_bf16_f32`: acc[i, j] += float(a[i, k]) *
  float(b[j, k]) over 64 x N x 16 (loops i, j, k); a and b are rows of shared tiles 64
  elements (128 bytes) long, laid out with `storage_swizzle = 128` (below), read through
  64-bit matrix descriptors;
* `wgmma_store_n{N}`: out[i, j] = acc[i, j] over 64 x N, each thread storing its N / 2 values.

The MMAs are asynchronous: a loop annotated `wgmma_batch = P` issues its MMAs after a
`wgmma.fence`, commits them as one group and waits until at most P groups are in flight.

`storage_swizzle = 128` on the block that writes a shared tile stores element offset e of
the tile at e ^ (((e >> 6) & 7) << 3) (fp16 / bf16): the 16-byte chunk c of row r of a
128-byte-row tile goes to chunk c ^ (r % 8), the layout wgmma's 128-byte swizzle mode reads,
and the 8 rows an access pattern touches fall in distinct banks. Only addresses change, so
the program computes the same values on any target.
"""

from __future__ import annotations

from .errors import LoweringError
from .intrinsics import INTRINSICS, TensorIntrin, accumulator_store, mma_update, zero_fill
from .stmt import Block, PrimFunc
from .visit import walk

WGMMA_N = (64, 128, 256)  # the N sizes offered (wgmma allows multiples of 8 up to 256)
WGMMA_BATCH = "wgmma_batch"  # loop annotation: fence, issue, commit, wait until <= P pending
STORAGE_SWIZZLE = "storage_swizzle"  # block annotation: swizzle width in bytes (128)
SWIZZLE_ATTR = "storage_swizzle"  # lowered PrimFunc attribute: "name:bytes,name:bytes"
SWIZZLE_BYTES = (128,)
ACC_SCOPE = "wgmma.accumulator"
_DTYPES = {"float16": "f16", "bfloat16": "bf16"}


def wgmma_name(n: int, dtype: str) -> str:
    """The MMA intrinsic for a 64 x n x 16 step with `dtype` operands."""
    return f"wgmma_m64n{n}k16_{_DTYPES[dtype]}_f32"


def _intrinsics() -> dict[str, TensorIntrin]:
    out: list[TensorIntrin] = []
    for n in WGMMA_N:
        doc = f"a 64x{n} float32 accumulator"
        out.append(
            TensorIntrin(
                f"wgmma_fill_n{n}",
                "fill",
                (64, n),
                None,
                doc=f"zero {doc}",
                acc_scope=ACC_SCOPE,
                pattern=zero_fill,
            )
        )
        for dtype in _DTYPES:
            out.append(
                TensorIntrin(
                    wgmma_name(n, dtype),
                    "mma",
                    (64, n, 16),
                    dtype,
                    doc=f"{dtype} x {dtype} + fp32 warpgroup MMA from swizzled shared tiles",
                    acc_scope=ACC_SCOPE,
                    operand_scopes=("shared", "shared"),
                    pattern=mma_update,
                )
            )
        out.append(
            TensorIntrin(
                f"wgmma_store_n{n}",
                "store",
                (64, n),
                None,
                doc=f"store {doc}",
                acc_scope=ACC_SCOPE,
                pattern=accumulator_store,
            )
        )
    return {i.name: i for i in out}


WGMMA_INTRINSICS: dict[str, TensorIntrin] = _intrinsics()
INTRINSICS.update(WGMMA_INTRINSICS)


def nvcc_arch(arch: str, source: str) -> str:
    """The -arch for `source`: wgmma needs the architecture-specific sm_90a on sm_90."""
    if arch == "sm_90" and "wgmma." in source:
        return "sm_90a"
    return arch


def swizzled_buffers(func: PrimFunc) -> str:
    """ "name:bytes,..." for the buffers whose writing block carries `storage_swizzle` (the
    lowered function keeps it as its SWIZZLE_ATTR attribute for the renderer)."""
    out: dict[str, int] = {}
    for n in walk(func.body):
        if isinstance(n, Block):
            for key, value in n.annotations:
                if key != STORAGE_SWIZZLE:
                    continue
                if int(value) not in SWIZZLE_BYTES or len(n.writes) != 1:
                    raise LoweringError(
                        f"block {n.name}: storage_swizzle must be one of {SWIZZLE_BYTES} on a "
                        f"block writing one buffer, got {value!r}"
                    )
                out[n.writes[0].buffer.name] = int(value)
    return ",".join(f"{k}:{v}" for k, v in sorted(out.items()))


def parse_swizzled(attrs: tuple[tuple[str, object], ...]) -> dict[str, int]:
    """The SWIZZLE_ATTR of a lowered function's attributes as {buffer name: bytes}."""
    text = str(dict(attrs).get(SWIZZLE_ATTR, ""))
    return {k: int(v) for k, v in (x.rsplit(":", 1) for x in text.split(",") if x)}
