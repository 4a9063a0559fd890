"""A readable, Python-like text form of expressions, statements and PrimFuncs."""

from __future__ import annotations

from typing import Any

from .expr import BinOp, Buffer, BufferLoad, Call, Cast, Const, Expr, Select, Var
from .stmt import (
    Allocate,
    Block,
    BlockRealize,
    BufferRegion,
    BufferStore,
    For,
    IfThenElse,
    PipelineSync,
    PrimFunc,
    Range,
    SeqStmt,
    SingleThread,
    Stmt,
    SyncThreads,
    ThreadAllReduce,
)

_INFIX = {
    "or": ("or", 0),
    "and": ("and", 1),
    "lt": ("<", 2),
    "le": ("<=", 2),
    "gt": (">", 2),
    "ge": (">=", 2),
    "eq": ("==", 2),
    "ne": ("!=", 2),
    "bitor": ("|", 3),
    "bitand": ("&", 4),
    "shr": (">>", 5),
    "shl": ("<<", 5),
    "add": ("+", 6),
    "sub": ("-", 6),
    "mul": ("*", 7),
    "div": ("/", 7),
    "floordiv": ("//", 7),
    "floormod": ("%", 7),
}


def expr_str(e: Expr, prec: int = 0) -> str:
    """Infix text of an expression, parenthesised only where needed."""
    if isinstance(e, Var):
        return e.name
    if isinstance(e, Const):
        if e.dtype in ("int64", "bool"):
            return repr(e.value)
        return f"{e.dtype}({e.value!r})"
    if isinstance(e, BufferLoad):
        return f"{e.buffer.name}[{', '.join(expr_str(i) for i in e.indices)}]"
    if isinstance(e, Cast):
        return f"{e.dtype}({expr_str(e.value)})"
    if isinstance(e, Call):
        return f"{e.op}({', '.join(expr_str(a) for a in e.args)})"
    if isinstance(e, Select):
        return f"select({expr_str(e.cond)}, {expr_str(e.true_value)}, {expr_str(e.false_value)})"
    if isinstance(e, BinOp):
        if e.op in ("min", "max"):
            return f"{e.op}({expr_str(e.a)}, {expr_str(e.b)})"
        sym, p = _INFIX[e.op]
        text = f"{expr_str(e.a, p)} {sym} {expr_str(e.b, p + 1)}"
        return f"({text})" if p < prec else text
    return repr(e)


def _region(r: BufferRegion) -> str:
    parts = []
    for rng in r.region:
        if isinstance(rng.extent, Const) and rng.extent.value == 1:
            parts.append(expr_str(rng.min))
        else:
            from .simplify import simplify

            parts.append(f"{expr_str(rng.min)}:{expr_str(simplify(rng.min + rng.extent))}")
    return f"{r.buffer.name}[{', '.join(parts)}]"


def _buffer_decl(b: Buffer) -> str:
    shape = ", ".join(expr_str(s) for s in b.shape) + ("," if len(b.shape) == 1 else "")
    scope = "" if b.scope == "global" else f", scope={b.scope!r}"
    return f"{b.name}: Buffer(({shape}), {b.dtype!r}{scope})"


def _annotations(ann: Any) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in ann)


def stmt_lines(s: Stmt, indent: int = 0) -> list[str]:
    """The text lines of a statement, indented by `indent` levels."""
    pad = "    " * indent
    if isinstance(s, SeqStmt):
        return [line for c in s.stmts for line in stmt_lines(c, indent)]
    if isinstance(s, For):
        kind = "" if s.kind == "serial" else f"  # {s.kind}"
        if s.thread:
            kind = f"  # bound to {s.thread}"
        if s.annotations:
            kind += f" [{_annotations(s.annotations)}]"
        head = f"{pad}for {s.var.name} in range({expr_str(s.extent)}):{kind}"
        return [head, *stmt_lines(s.body, indent + 1)]
    if isinstance(s, BufferStore):
        idx = ", ".join(expr_str(i) for i in s.indices)
        return [f"{pad}{s.buffer.name}[{idx}] = {expr_str(s.value)}"]
    if isinstance(s, IfThenElse):
        out = [f"{pad}if {expr_str(s.cond)}:", *stmt_lines(s.then_case, indent + 1)]
        if s.else_case is not None:
            out += [f"{pad}else:", *stmt_lines(s.else_case, indent + 1)]
        return out
    if isinstance(s, Allocate):
        return [f"{pad}alloc {_buffer_decl(s.buffer)}", *stmt_lines(s.body, indent)]
    if isinstance(s, PipelineSync):
        arg = f"(pending={s.pending})" if s.op == "wait" else "()"
        return [f"{pad}pipeline_{s.op}{arg}"]
    if isinstance(s, ThreadAllReduce):
        name, size = s.buffer.name, s.buffer.shape[0]
        elems = "[0]" if isinstance(size, Const) and size.value == 1 else f"[:{size}]"
        return [f"{pad}{name}{elems} = allreduce_{s.op}({name}{elems}, {s.thread})"]
    if isinstance(s, SingleThread):
        cond = " and ".join(f"{t} == 0" for t in s.threads)
        return [f"{pad}if {cond}:  # one thread", *stmt_lines(s.body, indent + 1)]
    if isinstance(s, SyncThreads):
        return [f"{pad}sync_cluster()" if s.cluster else f"{pad}sync_threads()"]
    if isinstance(s, BlockRealize):
        return _block_lines(s, indent)
    if isinstance(s, Block):
        return _block_lines(BlockRealize((), Const(True, "bool"), s), indent)
    return [f"{pad}{s!r}"]


def _block_lines(br: BlockRealize, indent: int) -> list[str]:
    pad = "    " * indent
    inner = "    " * (indent + 1)
    b = br.block
    out = [f'{pad}with block("{b.name}"):']
    for iv, value in zip(b.iter_vars, br.iter_values, strict=False):
        dom = _range(iv.dom)
        out.append(f"{inner}{iv.var.name} = axis.{iv.kind}({dom}, {expr_str(value)})")
    if not (isinstance(br.predicate, Const) and br.predicate.value):
        out.append(f"{inner}where({expr_str(br.predicate)})")
    if b.name != "root":
        out.append(f"{inner}reads({', '.join(_region(r) for r in b.reads)})")
        out.append(f"{inner}writes({', '.join(_region(r) for r in b.writes)})")
    if b.annotations:
        out.append(f"{inner}annotate({_annotations(b.annotations)})")
    for buf in b.alloc_buffers:
        out.append(f"{inner}alloc {_buffer_decl(buf)}")
    if b.init is not None:
        out.append(f"{inner}with init():")
        out += stmt_lines(b.init, indent + 2)
    out += stmt_lines(b.body, indent + 1)
    return out


def _range(r: Range) -> str:
    if isinstance(r.min, Const) and r.min.value == 0:
        return expr_str(r.extent)
    return f"{expr_str(r.min)}, {expr_str(r.min + r.extent)}"


def stmt_str(s: Stmt) -> str:
    """Text of a statement."""
    return "\n".join(stmt_lines(s))


def func_str(f: PrimFunc) -> str:
    """The whole function: signature with buffer declarations, then the body."""
    dims = ", ".join(v.name for v in f.shape_vars)
    lines = []
    if dims:
        lines.append(f"# symbolic dims: {dims}")
    params = ",\n    ".join(_buffer_decl(b) for b in f.params)
    outs = ", ".join(b.name for b in f.outputs)
    lines.append(f"def {f.name}(\n    {params},\n):  # outputs: {outs}")
    lines += stmt_lines(f.body, 1)
    return "\n".join(lines)
