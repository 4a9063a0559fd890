"""`tunefleet ops` and `tunefleet show`: browse the op library and its generated code."""

from __future__ import annotations

import json
from collections.abc import Mapping

import click

from .dtypes import DTypeError
from .expr import Var
from .ops import OpArgumentError, UnknownOpError, get_op, list_ops


@click.command(name="ops")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def ops(as_json: bool) -> None:
    """List the operator library and its shape parameters."""
    rows = [
        {
            "name": op.name,
            "params": list(op.params),
            "example": op.example,
            "attrs": op.attrs,
            "doc": op.doc,
        }
        for op in list_ops()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        example = ",".join(f"{k}={v}" for k, v in r["example"].items())
        attrs = " ".join(f"{k}={v!r}" for k, v in r["attrs"].items())
        line = (
            f"{r['name']:<{width}}  {','.join(r['params']):<10}  e.g. --shape {example:<28} {attrs}"
        )
        click.echo(line.rstrip())


def parse_shape(text: str, params: tuple[str, ...]) -> dict[str, int | Var]:
    """Parse `m=32,n=4096,k=?` (a `?` or a name keeps the dim symbolic)."""
    out: dict[str, int | Var] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise click.BadParameter(f"expected name=value, got {part!r}", param_hint="--shape")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in params:
            raise click.BadParameter(
                f"unknown dim {key!r}; this op takes {', '.join(params)}", param_hint="--shape"
            )
        if value.isdigit() and int(value) > 0:
            out[key] = int(value)
        elif value == "?":
            out[key] = Var(key)
        elif value.isidentifier():
            out[key] = Var(value)
        else:
            raise click.BadParameter(
                f"{key}={value!r}: use a positive int, '?' or a name for a symbolic dim",
                param_hint="--shape",
            )
    return out


BOOL_WORDS = {"true": True, "false": False}


def parse_attrs(items: tuple[str, ...], defaults: Mapping[str, object]) -> dict[str, object]:
    """Parse repeated `--attr key=value`, each value read as the type of the op's default.

    A boolean takes only `true` or `false` (`bias=maybe` is a usage error, not true); numbers
    must parse as numbers; an attribute the op does not have is refused.
    """
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--attr")
        key, text = (part.strip() for part in item.split("=", 1))
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise click.BadParameter(
                f"unknown attribute {key!r}; this op takes: {known}", param_hint="--attr"
            )
        out[key] = _attr_value(key, text, defaults[key])
    return out


def _attr_value(key: str, text: str, default: object) -> object:
    """`text` read as the type of `default`, or a usage error naming the accepted values."""
    if isinstance(default, bool):
        if text.lower() not in BOOL_WORDS:
            raise click.BadParameter(
                f"{key}={text!r}: {key} takes true or false", param_hint="--attr"
            )
        return BOOL_WORDS[text.lower()]
    kinds: dict[type, tuple[type, str]] = {int: (int, "an integer"), float: (float, "a number")}
    if type(default) in kinds:
        convert, what = kinds[type(default)]
        try:
            return convert(text)
        except ValueError:
            raise click.BadParameter(
                f"{key}={text!r}: {key} takes {what}", param_hint="--attr"
            ) from None
    return text


@click.command(name="show")
@click.argument("op_name", metavar="OP")
@click.option(
    "--shape", default="", help="Shape parameters, e.g. m=32,n=4096,k=4096 (defaults: the example)."
)
@click.option("--dtype", default="float32", show_default=True, help="float32, float16 or bfloat16.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--source", is_flag=True, help="Print the generated source of the default schedule.")
@click.option(
    "--attr", "attrs", multiple=True, help="Op attribute key=value (repeatable), e.g. bias=true."
)
def show(
    op_name: str, shape: str, dtype: str, target: str, source: bool, attrs: tuple[str, ...]
) -> None:
    """Print an operator's IR (default schedule applied) or its generated source."""
    try:
        op = get_op(op_name)
    except UnknownOpError as err:
        raise click.BadParameter(str(err), param_hint="OP") from None
    dims: dict[str, int | Var] = dict(op.example)
    dims.update(parse_shape(shape, op.params))
    try:
        func = op.build(dims, dtype, **parse_attrs(attrs, op.attrs))
    except (OpArgumentError, DTypeError) as err:
        raise click.UsageError(str(err)) from None
    from .default_schedule import default_schedule
    from .errors import IRError

    try:
        sch = default_schedule(func, target=target)
        if source:
            from .codegen import build_source

            ks = build_source(sch, target=target)
            click.echo(ks.source)
            if ks.launch_comment is not None:
                click.echo(ks.launch_comment)
        else:
            click.echo(sch.func.script())
    except IRError as err:
        raise click.ClickException(str(err)) from None
