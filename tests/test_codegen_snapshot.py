"""Generated C and CUDA stay byte-identical unless a change means to alter them.

Compares every default schedule's and every rule sketch's source (tests/codegen_snapshot.py)
with the committed digests; a change whose point is new code reruns
`python tests/codegen_snapshot.py --update` and says so in its commit.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_generated_code_matches_the_committed_digests() -> None:
    spec = importlib.util.spec_from_file_location("codegen_snapshot", HERE / "codegen_snapshot.py")
    assert spec is not None and spec.loader is not None
    snapshot = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = snapshot  # its worker processes find their function by name
    spec.loader.exec_module(snapshot)
    expected = json.loads((HERE / "codegen_digests.json").read_text())
    actual = snapshot.digests()
    changed = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
    missing = sorted(expected.keys() - actual.keys())
    added = sorted(actual.keys() - expected.keys())
    assert not changed, f"{len(changed)} sources changed, first: {changed[:5]}"
    assert not missing, f"{len(missing)} sources no longer generated, first: {missing[:5]}"
    assert not added, f"{len(added)} new sources without digests, first: {added[:5]}"
