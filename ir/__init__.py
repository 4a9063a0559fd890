"""The tensor-program IR: expressions, buffers, blocks, loops, PrimFuncs, schedules and codegen."""

from . import ops
from .analysis import bytes_moved, flops
from .codegen import KernelArg, KernelSource, build_source
from .default_schedule import default_schedule
from .dtypes import DTypeError
from .errors import CodegenError, IRError, LoweringError, ScheduleError
from .expr import (
    BinOp,
    Buffer,
    BufferLoad,
    Call,
    Cast,
    Const,
    Expr,
    Select,
    Var,
    cast,
    const,
    erf,
    exp,
    floordiv,
    floormod,
    max_,
    min_,
    rsqrt,
    select,
    sqrt,
    tanh,
)
from .lower import lower
from .schedule import Schedule
from .serialize import from_json, structural_equal, structural_hash, to_json
from .simplify import simplify
from .stmt import (
    Block,
    BlockRealize,
    BufferRegion,
    BufferStore,
    For,
    IterVar,
    PrimFunc,
    Range,
    SeqStmt,
)
from .tensor_expr import (
    FrontendError,
    Tensor,
    compute,
    create_prim_func,
    placeholder,
    reduce_axis,
)
from .tensor_expr import max as reduce_max
from .tensor_expr import min as reduce_min
from .tensor_expr import sum as reduce_sum
from .trace import RV, Instruction, Trace, trace_hash

__all__ = [
    "RV",
    "BinOp",
    "Block",
    "BlockRealize",
    "Buffer",
    "BufferLoad",
    "BufferRegion",
    "BufferStore",
    "Call",
    "Cast",
    "CodegenError",
    "Const",
    "DTypeError",
    "Expr",
    "For",
    "FrontendError",
    "IRError",
    "Instruction",
    "IterVar",
    "KernelArg",
    "KernelSource",
    "LoweringError",
    "PrimFunc",
    "Range",
    "Schedule",
    "ScheduleError",
    "Select",
    "SeqStmt",
    "Tensor",
    "Trace",
    "Var",
    "build_source",
    "bytes_moved",
    "cast",
    "compute",
    "const",
    "create_prim_func",
    "default_schedule",
    "erf",
    "exp",
    "floordiv",
    "floormod",
    "flops",
    "from_json",
    "lower",
    "max_",
    "min_",
    "ops",
    "placeholder",
    "reduce_axis",
    "reduce_max",
    "reduce_min",
    "reduce_sum",
    "rsqrt",
    "select",
    "simplify",
    "sqrt",
    "structural_equal",
    "structural_hash",
    "tanh",
    "to_json",
    "trace_hash",
]
