"""Grafana dashboards and provisioning files generated from `panels.py` with Grafana's own
builder library (grafana-foundation-sdk).

`export(folder)` writes the layout committed under dashboards/grafana/:

    dashboards/{fleet,job,records}.json
    provisioning/datasources/tunefleet.yaml   (Prometheus and PostgreSQL, from env variables)
    provisioning/dashboards/tunefleet.yaml    (a file provider for the dashboards folder)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, QueryVariable
from grafana_foundation_sdk.builders.prometheus import Dataquery as PrometheusQuery
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    GridPos,
    VariableRefresh,
    VariableSort,
)

from tunefleet.dashboards.panels import (
    DASHBOARDS,
    POSTGRES_TYPE,
    POSTGRES_UID,
    PROMETHEUS_TYPE,
    PROMETHEUS_UID,
    DashboardSpec,
    PanelSpec,
)

PANEL_BUILDERS: dict[str, Any] = {
    "timeseries": timeseries.Panel,
    "stat": stat.Panel,
    "bargauge": bargauge.Panel,
    "table": table.Panel,
}
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/tunefleet"  # where the provider reads them
FOLDER = "tunefleet"
GRID_WIDTH = 24


class SqlQuery(cogvariants.Dataquery):
    """A raw-SQL query of Grafana's PostgreSQL datasource (the SDK has no builder for it)."""

    def __init__(self, ref_id: str, sql: str, fmt: str) -> None:
        self.ref_id = ref_id
        self.sql = sql
        self.fmt = fmt

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.ref_id,
            "datasource": {"type": POSTGRES_TYPE, "uid": POSTGRES_UID},
            "editorMode": "code",
            "format": self.fmt,
            "rawQuery": True,
            "rawSql": self.sql,
        }


class SqlQueryBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    """Hands a `SqlQuery` to a panel builder's `with_target`."""

    def __init__(self, query: SqlQuery) -> None:
        self.query = query

    def build(self) -> cogvariants.Dataquery:
        return self.query


def datasource(source: str) -> DataSourceRef:
    """The datasource reference of `prometheus` or `postgres` (fixed uids, provisioned)."""
    if source == "prometheus":
        return DataSourceRef(type_val=PROMETHEUS_TYPE, uid=PROMETHEUS_UID)
    return DataSourceRef(type_val=POSTGRES_TYPE, uid=POSTGRES_UID)


def build_dashboard(spec: DashboardSpec) -> Dashboard:
    """The SDK builder of one dashboard, panels laid out left to right, top to bottom."""
    board = (
        Dashboard(spec.title)
        .uid(spec.uid)
        .tags(["tunefleet", "generated"])
        .editable()
        .refresh("30s" if spec.source == "prometheus" else "5m")
        .time("now-6h" if spec.source == "prometheus" else "now-30d", "now")
        .timezone("browser")
    )
    if spec.job_variable:
        board = board.with_variable(
            QueryVariable("job")
            .label("Job")
            .datasource(datasource("prometheus"))
            .query("label_values(tunefleet_job_budget_trials, job_id)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.NUMERICAL_DESC)
        )
    x = y = row_height = 0
    for i, panel in enumerate(spec.panels):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        board = board.with_panel(_panel(panel, spec.source, i + 1, GridPos(panel.height,
                                                                           panel.width, x, y)))
        x += panel.width
        row_height = max(row_height, panel.height)
    return board


def _panel(spec: PanelSpec, source: str, panel_id: int, pos: GridPos) -> Any:
    panel = (
        PANEL_BUILDERS[spec.kind]()
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .unit(spec.unit)
        .datasource(datasource(source))
        .grid_pos(pos)
    )
    for j, query in enumerate(spec.queries):
        ref = chr(ord("A") + j)
        if source == "prometheus":
            target: Any = (
                PrometheusQuery()
                .ref_id(ref)
                .datasource(datasource(source))
                .expr(query.text)
                .legend_format(query.legend or "__auto")
            )
        else:
            fmt = "time_series" if spec.kind == "timeseries" else "table"
            target = SqlQueryBuilder(SqlQuery(ref, query.text, fmt))
        panel = panel.with_target(target)
    return panel


def dashboard_json(name: str) -> dict[str, Any]:
    """The JSON model of dashboard `name` (fleet, job, records)."""
    return json.loads(json.dumps(build_dashboard(DASHBOARDS[name]).build(), cls=JSONEncoder))


def render(data: dict[str, Any]) -> str:
    """The committed text of a dashboard: sorted keys, two-space indent, final newline."""
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


DATASOURCES_YAML = f"""\
# Grafana datasources of tunefleet's dashboards (generated by `tunefleet dashboards export`).
# Grafana expands the $VARIABLES from its environment when it reads this file.
apiVersion: 1
datasources:
  - name: tunefleet Prometheus
    uid: {PROMETHEUS_UID}
    type: {PROMETHEUS_TYPE}
    access: proxy
    url: $TUNEFLEET_PROMETHEUS_URL
    isDefault: true
  - name: tunefleet PostgreSQL
    uid: {POSTGRES_UID}
    type: {POSTGRES_TYPE}
    access: proxy
    url: $TUNEFLEET_PG_HOST
    user: $TUNEFLEET_PG_USER
    jsonData:
      database: $TUNEFLEET_PG_DATABASE
      sslmode: $TUNEFLEET_PG_SSLMODE
    secureJsonData:
      password: $TUNEFLEET_PG_PASSWORD
"""

PROVIDERS_YAML = f"""\
# Grafana file provider for tunefleet's dashboards (generated by `tunefleet dashboards export`).
# Mount the exported dashboards/ folder (its fleet, job and records.json) at the path below.
apiVersion: 1
providers:
  - name: tunefleet
    folder: {FOLDER}
    type: file
    disableDeletion: false
    allowUiUpdates: false
    options:
      path: {DASHBOARDS_PATH}
"""


def exported_files() -> dict[str, str]:
    """Every file `export` writes, by path relative to its folder, with its text."""
    files = {f"dashboards/{name}.json": render(dashboard_json(name)) for name in DASHBOARDS}
    files["provisioning/datasources/tunefleet.yaml"] = DATASOURCES_YAML
    files["provisioning/dashboards/tunefleet.yaml"] = PROVIDERS_YAML
    return files


def export(folder: Path) -> list[Path]:
    """Write the dashboards and provisioning files under `folder`; the paths written."""
    written = []
    for rel, text in exported_files().items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
