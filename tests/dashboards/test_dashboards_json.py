"""The committed dashboards and provisioning files are exactly what the code generates, they
pass the SDK's own parsing, and their PromQL names only metrics the job loop exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus as prom_model
from grafana_foundation_sdk.models.dashboard import Dashboard

from tunefleet.dashboards.grafana_json import exported_files
from tunefleet.dashboards.metrics import METRICS
from tunefleet.dashboards.panels import DASHBOARDS, POSTGRES_UID, PROMETHEUS_UID

COMMITTED = Path(__file__).parents[2] / "dashboards" / "grafana"
CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"


def test_the_committed_files_are_what_the_code_generates() -> None:
    generated = exported_files()
    committed = {
        str(p.relative_to(COMMITTED)): p.read_text() for p in COMMITTED.rglob("*") if p.is_file()
    }
    assert set(committed) == set(generated), "run 'tunefleet dashboards export dashboards/grafana'"
    for rel, text in generated.items():
        assert committed[rel] == text, f"{rel} is stale: run 'tunefleet dashboards export "
        "dashboards/grafana' and commit the result"
    assert {f"dashboards/{n}.json" for n in ("fleet", "job", "records")} <= set(committed)


def _subset(small: Any, big: Any, path: str = "") -> list[str]:
    """Paths where `small` has something `big` lacks or holds differently."""
    if isinstance(small, dict):
        if not isinstance(big, dict):
            return [path]
        return [p for k, v in small.items()
                for p in ([f"{path}/{k}"] if k not in big else _subset(v, big[k], f"{path}/{k}"))]
    if isinstance(small, list):
        if not isinstance(big, list) or len(small) != len(big):
            return [path]
        return [p for i, (a, b) in enumerate(zip(small, big, strict=True))
                for p in _subset(a, b, f"{path}[{i}]")]  # fmt: skip
    return [] if small == big else [path]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_each_dashboard_passes_the_sdk_parsing_unchanged(name: str) -> None:
    register_default_plugins()
    data = json.loads((COMMITTED / "dashboards" / f"{name}.json").read_text())
    model = Dashboard.from_json(data)
    back = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _subset(data, back) == [], "the SDK dropped or changed fields"
    again = json.loads(json.dumps(Dashboard.from_json(back), cls=JSONEncoder))
    assert again == back
    assert model.uid == DASHBOARDS[name].uid and model.title == DASHBOARDS[name].title
    assert model.panels and len(model.panels) == len(DASHBOARDS[name].panels)
    ids = [p.id_val for p in model.panels]
    assert len(set(ids)) == len(ids)
    for panel in model.panels:
        assert cogruntime.panelcfg_config(panel.type_val) is not None, panel.type_val
        assert panel.grid_pos is not None and panel.grid_pos.x + panel.grid_pos.w <= 24
        assert panel.targets, panel.title
        for target in panel.targets:
            if DASHBOARDS[name].source == "prometheus":
                assert isinstance(target, prom_model.Dataquery), panel.title
                assert target.datasource.uid == PROMETHEUS_UID and target.expr
            else:
                raw = target.to_json()
                assert raw["datasource"]["uid"] == POSTGRES_UID and raw["rawSql"]


def test_promql_names_only_exported_metrics() -> None:
    names = {m.name for m in METRICS}
    exported = names | {f"{m.name}_{s}" for m in METRICS if m.kind == "histogram"
                        for s in ("bucket", "count", "sum")}  # fmt: skip
    used = set()
    for spec in DASHBOARDS.values():
        for panel in spec.panels:
            for q in panel.queries:
                used |= set(re.findall(r"tunefleet_[a-z_]+", q.text))
    used = {u for u in used if not u.startswith("tunefleet_test")}
    assert used and used <= exported, used - exported
    assert used >= {"tunefleet_candidates_measured_total", "tunefleet_task_best_seconds"}


def test_metric_names_follow_prometheus_conventions() -> None:
    for m in METRICS:
        assert re.fullmatch(r"tunefleet_[a-z_]+", m.name), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        if m.kind == "histogram":
            assert m.name.endswith("_seconds"), m.name
        assert not {"trace", "trace_hash", "workload_key"} & set(m.labels), m.name


def test_the_docs_list_every_metric() -> None:
    page = (Path(__file__).parents[2] / "docs" / "dashboards.md").read_text()
    for m in METRICS:
        row = f"| `{m.name}` | {m.kind} | {', '.join(m.labels)} |"
        assert row in page, f"docs/dashboards.md lacks the row of {m.name}"


def test_export_writes_the_layout(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", CODE, "dashboards", "export", str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for rel, text in exported_files().items():
        assert (tmp_path / "g" / rel).read_text() == text
    (tmp_path / "file").write_text("")
    bad = subprocess.run([sys.executable, "-c", CODE, "dashboards", "export",
                          str(tmp_path / "file" / "g")], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("tunefleet: error: cannot write")
    assert "Traceback" not in bad.stderr and len(bad.stderr.splitlines()) == 1
