"""The annotation registry: every key in use is registered, annotate refuses unknown keys and
bad values, and docs/ir.md holds the registry's table."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tunefleet.ir import Schedule, ops
from tunefleet.ir import annotation_keys as keys
from tunefleet.ir.annotation_keys import REGISTRY, check_annotation, registry_table
from tunefleet.ir.errors import ScheduleError
from tunefleet.ir.lower import lower
from tunefleet.ir.stmt import Block, For
from tunefleet.ir.trace import ExprRV, LoopRV
from tunefleet.ir.visit import walk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from dense_tensorcore_cuda import dense_mma_schedule, dense_tc_schedule  # noqa: E402
from dense_wgmma_cuda import dense_wgmma_schedule  # noqa: E402
from gemv_cuda import gemv_schedule  # noqa: E402

# Files that name a key as a string for another purpose: schedule instruction names in traces,
# and the module that owns the wgmma constants the registry imports.
_LITERAL_OK = {"annotation_keys.py", "intrinsics_wgmma.py", "schedule.py", "trace.py"}


def _sources() -> list[Path]:
    return sorted([*(ROOT / "ir").glob("*.py"), *(ROOT / "tuner").glob("*.py")])


def _annotate_keys(tree: ast.AST) -> list[ast.expr]:
    return [
        n.args[1]
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "annotate"
        and len(n.args) == 3
    ]


def test_every_annotate_call_in_ir_and_tuner_uses_a_registered_constant() -> None:
    seen = 0
    for path in _sources():
        for arg in _annotate_keys(ast.parse(path.read_text())):
            seen += 1
            assert isinstance(arg, ast.Name), f"{path.name}: annotate key {ast.dump(arg)}"
            value = getattr(keys, arg.id, None)
            assert value in REGISTRY, f"{path.name}: {arg.id} is not a registered key"
    assert seen >= 5  # the scan does find the rules' and schedules' annotate calls


def test_no_reader_spells_a_key_as_a_string_literal() -> None:
    for path in _sources():
        if path.name in _LITERAL_OK:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef)
            and n.body
            and isinstance(n.body[0], ast.Expr)
        }
        for n in ast.walk(tree):
            if isinstance(n, ast.Constant) and n.value in REGISTRY and id(n) not in docstrings:
                pytest.fail(f"{path.name}:{n.lineno} spells annotation key {n.value!r}")


def _keys_of(func: object) -> set[str]:
    out: set[str] = set()
    for n in walk(func.body):  # type: ignore[attr-defined]
        if isinstance(n, For | Block):
            out.update(k for k, _ in n.annotations)
    return out


def test_keys_on_scheduled_and_lowered_kernels_are_registered() -> None:
    schedules = [
        dense_tc_schedule(256, 256, 256, stages=3),
        dense_mma_schedule(256, 256, 256, raster=4),
        dense_wgmma_schedule(128, 256, 128),
        gemv_schedule(1, 4096, 4096),
    ]
    found: set[str] = set()
    for sch in schedules:
        found |= _keys_of(sch.func) | _keys_of(lower(sch.func))
    assert found <= set(REGISTRY), found - set(REGISTRY)
    assert {keys.PIPELINE_STAGES, keys.TENSORIZE, keys.ASYNC_COPY, keys.HOIST_LOADS} <= found
    assert {keys.BLOCK_RASTERIZE, keys.PIPELINE_FRAGMENTS, keys.WGMMA_BATCH} <= found


def test_unknown_key_is_refused_naming_the_known_ones() -> None:
    sch = Schedule(ops.get_op("dense").build({"m": 8, "n": 8, "k": 8}, "float32"))
    loop = sch.get_loops(sch.get_block("dense"))[0]
    with pytest.raises(ScheduleError) as info:
        sch.annotate(loop, "auto_unroll_max_steps", 16)
    msg = str(info.value)
    assert "unknown annotation key 'auto_unroll_max_steps'" in msg
    assert "auto_unroll_max_step," in msg and "\n" not in msg


@pytest.mark.parametrize(
    ("key", "value", "on", "match"),
    [
        (keys.PIPELINE_STAGES, 1, "loop", "must be an int >= 2, got 1"),
        (keys.AUTO_UNROLL, -4, "loop", "must be an int >= 0"),
        (keys.AUTO_UNROLL, True, "loop", "must be an int >= 0"),
        (keys.BLOCK_RASTERIZE, "4", "loop", "must be an int >= 1"),
        (keys.HOIST_LOADS, 2, "loop", "must be 1"),
        (keys.STORAGE_ALIGN, "x:8", "block", "buffer:factor:offset"),
        (keys.STORAGE_SWIZZLE, 64, "block", "must be one of"),
        (keys.HOIST_LOADS, LoopRV(3), "loop", "not the handle l3"),
        (keys.TENSORIZE, ExprRV(2), "loop", "not the handle v2"),
        (keys.STORAGE_SWIZZLE, 128, "loop", "attaches to a block, not a loop"),
        (keys.ASYNC_COPY, 1, "loop", "written by lowering"),
    ],
)
def test_bad_values_and_targets_are_refused(key: str, value: object, on: str, match: str) -> None:
    with pytest.raises(ScheduleError, match=match):
        check_annotation(key, value, on)


def test_good_values_and_sampled_handles_pass() -> None:
    check_annotation(keys.PIPELINE_STAGES, 3, "loop")
    check_annotation(keys.AUTO_UNROLL, ExprRV(5), "loop")
    check_annotation(keys.STORAGE_ALIGN, "x_shared:32:8", "block")
    check_annotation(keys.STORAGE_SWIZZLE, 128, "block")


def test_a_refused_annotation_leaves_the_schedule_unchanged() -> None:
    sch = Schedule(ops.get_op("dense").build({"m": 8, "n": 8, "k": 8}, "float32"))
    loop = sch.get_loops(sch.get_block("dense"))[0]
    before, insts = sch.func, len(sch.trace.insts)
    with pytest.raises(ScheduleError):
        sch.annotate(loop, keys.MIN_BLOCKS_PER_SM, 0)
    assert sch.func == before and len(sch.trace.insts) == insts


def test_docs_hold_the_registry_table() -> None:
    assert registry_table() in (ROOT / "docs" / "ir.md").read_text()
