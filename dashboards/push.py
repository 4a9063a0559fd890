"""Create or update tunefleet's datasources, folder and dashboards in a Grafana through its
HTTP API (grafana-client), so running it twice changes nothing the second time.

Grafana's documented calls used: GET/POST /api/folders[/{uid}], GET /api/datasources/uid/{uid}
then POST /api/datasources or PUT /api/datasources/uid/{uid}, and POST /api/dashboards/db
with `overwrite: true` and the folder's uid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

from tunefleet.dashboards.grafana_json import FOLDER, dashboard_json
from tunefleet.dashboards.panels import (
    DASHBOARDS,
    POSTGRES_TYPE,
    POSTGRES_UID,
    PROMETHEUS_TYPE,
    PROMETHEUS_UID,
)

FOLDER_UID = "tunefleet"


class PushError(RuntimeError):
    """Grafana refused or could not be reached; the message is one line."""


@dataclass(frozen=True)
class PushConfig:
    """What `push` provisions: the URL Grafana reaches Prometheus at, and optionally the
    PostgreSQL record database the Records dashboard reads (a SQLAlchemy URL)."""

    prometheus_url: str
    postgres_url: str | None = None
    folder_title: str = FOLDER


def datasources(config: PushConfig) -> list[dict[str, Any]]:
    """The datasource bodies of Grafana's POST /api/datasources for `config`."""
    out: list[dict[str, Any]] = [
        {
            "uid": PROMETHEUS_UID,
            "name": "tunefleet Prometheus",
            "type": PROMETHEUS_TYPE,
            "access": "proxy",
            "url": config.prometheus_url,
            "isDefault": True,
            "jsonData": {"httpMethod": "POST"},
        }
    ]
    if config.postgres_url is not None:
        url = make_url(config.postgres_url)
        host = f"{url.host or 'localhost'}:{url.port or 5432}"
        out.append(
            {
                "uid": POSTGRES_UID,
                "name": "tunefleet PostgreSQL",
                "type": POSTGRES_TYPE,
                "access": "proxy",
                "url": host,
                "user": url.username or "",
                "isDefault": False,
                "jsonData": {"database": url.database or "", "sslmode": "disable"},
                "secureJsonData": {"password": url.password or ""},
            }
        )
    return out


def push(api: Any, config: PushConfig) -> list[str]:
    """Create or update the folder, datasources and dashboards through `api` (a
    grafana_client.GrafanaApi); one line per thing done."""
    from grafana_client.client import GrafanaClientError, GrafanaException

    done = []
    try:
        try:
            api.folder.get_folder(FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: exists")
        except GrafanaClientError as err:
            if err.status_code != 404:
                raise
            api.folder.create_folder(config.folder_title, uid=FOLDER_UID)
            done.append(f"folder {FOLDER_UID}: created")
        for body in datasources(config):
            uid = body["uid"]
            try:
                api.datasource.get_datasource_by_uid(uid)
            except GrafanaClientError as err:
                if err.status_code != 404:
                    raise
                api.datasource.create_datasource(body)
                done.append(f"datasource {uid}: created")
            else:
                api.datasource.update_datasource_by_uid(uid, body)
                done.append(f"datasource {uid}: updated")
        for name in DASHBOARDS:
            board = dashboard_json(name)
            api.dashboard.update_dashboard(
                {
                    "dashboard": {**board, "id": None},
                    "folderUid": FOLDER_UID,
                    "overwrite": True,
                    "message": "tunefleet dashboards push",
                }
            )
            done.append(f"dashboard {board['uid']}: saved")
    except GrafanaException as err:
        raise PushError(f"Grafana answered {err.status_code}: {_message(err)}") from None
    except OSError as err:
        raise PushError(f"cannot reach Grafana: {err}") from None
    return done


def _message(err: Any) -> str:
    response = getattr(err, "response", None)
    if isinstance(response, Mapping) and "message" in response:
        return str(response["message"])
    return str(getattr(err, "message", err)).splitlines()[0]
