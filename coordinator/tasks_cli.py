"""`tunefleet tasks`: split a model into tuning tasks and show where its forward time goes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import click

from tunefleet.coordinator.buckets import DimSpecError, eval_dims, parse_assignments
from tunefleet.coordinator.graph import PINNED, Phase, Quant
from tunefleet.coordinator.models import ModelConfig, ModelConfigError
from tunefleet.coordinator.presets import PRESETS, resolve_model
from tunefleet.coordinator.roofline import RooflineTarget, UnknownTargetError, get_target, shares
from tunefleet.coordinator.tasks import Task, model_tasks


@click.command(name="tasks")
@click.option(
    "--model",
    "model_spec",
    required=True,
    metavar="NAME|PATH",
    help=f"A preset ({', '.join(PRESETS)}) or a config.json / model directory.",
)
@click.option(
    "--phase",
    type=click.Choice(["prefill", "decode", "both"]),
    default="both",
    show_default=True,
    help="Which forward pass to split.",
)
@click.option(
    "--quant",
    type=click.Choice(["none", "q4"]),
    default="none",
    show_default=True,
    help="q4: 4-bit weights, dense layers become q4_dense.",
)
@click.option(
    "--set",
    "set_spec",
    default="",
    metavar="DIM=V,...",
    help="Dim values for FLOPs/bytes/share, e.g. n=128,b=1,m=4096 "
    "(default: decode b=1, m=4096; prefill n=2048, m=n).",
)
@click.option(
    "--buckets",
    "bucket_spec",
    default="",
    metavar="DIM=V:V,...",
    help="Bucket values to tune at, e.g. b=1:8:32 (default decode b=1:4:16:64, "
    "m=4096; prefill n=128:512:2048, m=4096).",
)
@click.option(
    "--target",
    "target_name",
    default="h100",
    show_default=True,
    help="Roofline target for the time share: h100, h200, a100, cpu.",
)
@click.option("--no-fuse", is_flag=True, help="Keep every graph op as its own kernel.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def tasks(model_spec: str, phase: str, quant: str, set_spec: str, bucket_spec: str,
          target_name: str, no_fuse: bool, as_json: bool) -> None:  # fmt: skip
    """Split a model into de-duplicated tuning tasks with FLOPs, bytes and time share."""
    try:
        model = resolve_model(model_spec)
    except ModelConfigError as err:
        if "unknown model" in str(err):
            raise click.BadParameter(str(err), param_hint="--model") from None
        raise click.ClickException(str(err)) from None
    try:
        target = get_target(target_name)
    except UnknownTargetError as err:
        raise click.BadParameter(str(err), param_hint="--target") from None
    try:
        overrides = _single_values(parse_assignments(set_spec))
    except DimSpecError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
    try:
        bucket_overrides = parse_assignments(bucket_spec)
    except DimSpecError as err:
        raise click.BadParameter(str(err), param_hint="--buckets") from None

    phases = [Phase.PREFILL, Phase.DECODE] if phase == "both" else [Phase(phase)]
    reports = []
    for ph in phases:
        try:
            # with both phases, a dim one of them pins (decode n, prefill b) is for the other
            mine = {k: v for k, v in overrides.items() if len(phases) == 1 or k not in PINNED[ph]}
            dims = eval_dims(ph, mine)
            found = model_tasks(model, ph, Quant(quant), fusion=not no_fuse,
                                buckets=bucket_overrides)  # fmt: skip
        except DimSpecError as err:
            raise click.BadParameter(str(err), param_hint="--set/--buckets") from None
        except ModelConfigError as err:
            raise click.ClickException(str(err)) from None
        reports.append(_report(model, ph, found, dims, target))

    if as_json:
        click.echo(json.dumps(_merge(model, phase, reports), indent=2))
    else:
        for i, rep in enumerate(reports):
            if i:
                click.echo()
            click.echo(_table(rep))


def _single_values(values: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    out = {}
    for name, vals in values.items():
        if len(vals) != 1:
            raise DimSpecError(f"{name}: give one value to report at, got {len(vals)}")
        out[name] = vals[0]
    return out


def _report(model: ModelConfig, phase: Phase, found: Sequence[Task], dims: Mapping[str, int],
            target: RooflineTarget) -> dict[str, Any]:  # fmt: skip
    records = [t.to_json(dims) for t in found]
    part, seconds = shares([(r["weight"], r["flops"], r["bytes"]) for r in records], target,
                           model.dtype)  # fmt: skip
    for r, s in zip(records, part, strict=True):
        r["phase"] = phase.value
        r["share"] = round(s, 6)
    return {
        "model": model.name,
        "phase": phase.value,
        "dims": dict(dims),
        "target": target.name,
        "tasks": records,
        "flops_total": sum(r["weight"] * r["flops"] for r in records),
        "bytes_total": sum(r["weight"] * r["bytes"] for r in records),
        "roofline_seconds": seconds,
    }


def _merge(model: ModelConfig, phase: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    if len(reports) == 1:
        return reports[0]
    return {
        "model": model.name,
        "phase": phase,
        "dims": {r["phase"]: r["dims"] for r in reports},
        "target": reports[0]["target"],
        "tasks": [t for r in reports for t in r["tasks"]],
        "flops_total": sum(r["flops_total"] for r in reports),
        "flops_total_by_phase": {r["phase"]: r["flops_total"] for r in reports},
        "roofline_seconds_by_phase": {r["phase"]: r["roofline_seconds"] for r in reports},
    }


def _si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for div, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def _shape_text(shape: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in shape.items())


def _table(rep: Mapping[str, Any]) -> str:
    dims = ", ".join(f"{k}={v}" for k, v in rep["dims"].items())
    head = (
        f"{rep['model']} {rep['phase']} at {dims}: {len(rep['tasks'])} tasks, "
        f"{_si(rep['flops_total'], 'FLOP')}, {_si(rep['bytes_total'], 'B')}, "
        f"roofline {rep['roofline_seconds'] * 1e3:.3f} ms on {rep['target']}"
    )
    cols = ["task", "kind", "op", "shape", "weight", "FLOPs", "bytes", "share"]
    rows = [
        [
            ", ".join(t["calls"]),
            t["kind"],
            t["op"],
            _shape_text(t["shape"]),
            str(t["weight"]),
            _si(t["flops"]),
            _si(t["bytes"], "B"),
            f"{100 * t['share']:.1f}%",
        ]
        for t in rep["tasks"]
    ]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    right = {4, 5, 6, 7}

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [head, line(cols), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)
