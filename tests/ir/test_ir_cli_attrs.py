"""`--attr key=value` is read as the type of the op's attribute: a word that is not a boolean
is a one-line usage error (exit 2) naming the accepted values, never silently true."""

from __future__ import annotations

import pytest

from tunefleet.coordinator.cli import main


def show(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["show", *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("op", "attr", "fragment"),
    [
        ("dense", "bias=maybe", "bias takes true or false"),
        ("dense", "bias=1", "bias takes true or false"),
        ("q4_dense", "group_size=big", "group_size takes an integer"),
        ("rmsnorm", "eps=small", "eps takes a number"),
        ("gelu", "bias=true", "unknown attribute 'bias'; this op takes: approximate"),
    ],
)
def test_a_bad_attribute_value_is_a_one_line_usage_error(
    capsys, op: str, attr: str, fragment: str
) -> None:
    code, out, err = show(capsys, op, "--attr", attr)
    lines = err.strip().splitlines()
    assert code == 2 and out == "" and len(lines) == 1 and fragment in lines[0], err


def test_attribute_values_take_their_type(capsys) -> None:
    shape = ["--shape", "m=1,n=8,k=8"]
    code, with_bias, _ = show(capsys, "dense", *shape, "--attr", "bias=True")
    assert code == 0 and "bias: Buffer" in with_bias
    code, without, _ = show(capsys, "dense", *shape, "--attr", "bias=false")
    assert code == 0 and "bias" not in without
    code, out, _ = show(capsys, "q4_dense", "--attr", "group_size=16", "--shape", "m=1,n=8,k=64")
    assert code == 0 and "q4_dense" in out
