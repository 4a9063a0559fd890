"""`tunefleet dashboards push` against a small local HTTP server that keeps what grafana-client
sends and answers as Grafana's documented HTTP API does (there is no Grafana server package
for these machines). Each request is checked against that API: path, method, bearer token and
the body fields the docs require; pushing twice leaves the same state."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunefleet.dashboards.panels import DASHBOARDS, POSTGRES_UID, PROMETHEUS_UID

CODE = "import sys; from tunefleet.coordinator.cli import main; sys.exit(main())"
TOKEN = "glsa_test-token-123"
PG = "postgresql+psycopg://reader:s3cret@db.example:5433/records"

# Grafana HTTP API (grafana.com/docs/grafana/latest/developers/http_api/): method, path, and
# the body fields each call requires.
API: list[tuple[str, re.Pattern[str], tuple[str, ...]]] = [
    ("GET", re.compile(r"/api/folders/(?P<uid>[\w-]+)"), ()),  # folder.md "Get folder by uid"
    ("POST", re.compile(r"/api/folders"), ("title",)),  # folder.md "Create folder"
    ("GET", re.compile(r"/api/datasources/uid/(?P<uid>[\w-]+)"), ()),  # data_source.md
    ("POST", re.compile(r"/api/datasources"), ("name", "type", "access")),  # "Create"
    ("PUT", re.compile(r"/api/datasources/uid/(?P<uid>[\w-]+)"), ("name", "type", "access")),
    ("POST", re.compile(r"/api/dashboards/db"), ("dashboard",)),  # dashboard.md
]


class FakeGrafana:
    """The state a Grafana would keep, and every request it was sent."""

    def __init__(self) -> None:
        self.folders: dict[str, dict[str, Any]] = {}
        self.datasources: dict[str, dict[str, Any]] = {}
        self.dashboards: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.errors: list[str] = []

    def handle(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, Any]:
        self.requests.append((method, path, body))
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Invalid API key"}
        for m, pattern, required in API:
            match = pattern.fullmatch(path)
            if m == method and match:
                missing = [f for f in required if f not in (body or {})]
                if missing:
                    self.errors.append(f"{method} {path} lacks {missing}")
                    return 400, {"message": f"bad request: {missing}"}
                if body is not None and not (headers.get("Content-Type") or "").startswith(
                    "application/json"
                ):
                    self.errors.append(f"{method} {path} without a JSON content type")
                return self._answer(method, path, match.groupdict().get("uid"), body)
        self.errors.append(f"{method} {path} is not a documented call")
        return 404, {"message": "Not found"}

    def _answer(self, method: str, path: str, uid: str | None, body: Any) -> tuple[int, Any]:
        if path.startswith("/api/folders"):
            if method == "GET":
                found = self.folders.get(uid or "")
                return (200, found) if found else (404, {"message": "folder not found"})
            folder = {"id": len(self.folders) + 1, "uid": body.get("uid"), "title": body["title"]}
            self.folders[folder["uid"]] = folder
            return 200, folder
        if path.startswith("/api/datasources"):
            if method == "GET":
                found = self.datasources.get(uid or "")
                return (200, found) if found else (404, {"message": "Data source not found"})
            if method == "PUT" and uid not in self.datasources:
                return 404, {"message": "Data source not found"}
            key = uid if method == "PUT" else body.get("uid")
            if method == "POST" and key in self.datasources:
                return 409, {"message": "data source with the same uid already exists"}
            self.datasources[key] = body
            said = "Datasource updated" if method == "PUT" else "Datasource added"
            return 200, {"id": 1, "message": said, "name": body["name"], "datasource": body}
        board = body["dashboard"]
        if board.get("id") is not None:
            self.errors.append("a new or overwritten dashboard must have id null")
        if board["uid"] in self.dashboards and not body.get("overwrite"):
            return 412, {"message": "The dashboard has been changed by someone else",
                         "status": "version-mismatch"}  # fmt: skip
        if body.get("folderUid") not in self.folders:
            return 400, {"message": "folder not found"}
        self.dashboards[board["uid"]] = body
        return 200, {"id": 1, "uid": board["uid"], "status": "success", "version": 1,
                     "url": f"/d/{board['uid']}", "slug": board["uid"]}  # fmt: skip


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    state = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            code, answer = state.handle(self.command, self.path, self.headers, body)
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _push(url: str, tmp_path: Path, *extra: str, token: str | None = TOKEN):
    env = dict(os.environ, HOME=str(tmp_path / "home"))
    env.pop("TUNEFLEET_GRAFANA_TOKEN", None)
    if token is not None:
        env["TUNEFLEET_GRAFANA_TOKEN"] = token
    args = ["dashboards", "push", "--grafana-url", url, "--prometheus-url", "http://prom:9090",
            *extra]  # fmt: skip
    return subprocess.run([sys.executable, "-c", CODE, *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_push_creates_then_updates_the_same_state(tmp_path: Path, grafana) -> None:
    state, url = grafana
    first = _push(url, tmp_path, "--db", PG)
    assert first.returncode == 0, first.stderr
    assert state.errors == []
    assert set(state.folders) == {"tunefleet"}
    assert set(state.datasources) == {PROMETHEUS_UID, POSTGRES_UID}
    assert set(state.dashboards) == {d.uid for d in DASHBOARDS.values()}
    prom, pg = state.datasources[PROMETHEUS_UID], state.datasources[POSTGRES_UID]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prom:9090"
    assert pg["type"] == "grafana-postgresql-datasource" and pg["url"] == "db.example:5433"
    assert pg["user"] == "reader" and pg["jsonData"]["database"] == "records"
    assert pg["secureJsonData"] == {"password": "s3cret"}
    for body in state.dashboards.values():
        assert body["folderUid"] == "tunefleet" and body["overwrite"] is True
        assert body["dashboard"]["panels"]
    assert "folder tunefleet: created" in first.stdout
    snapshot = json.dumps([state.folders, state.datasources, state.dashboards], sort_keys=True)
    sent = len(state.requests)

    second = _push(url, tmp_path, "--db", PG)
    assert second.returncode == 0, second.stderr
    assert state.errors == []
    again = json.dumps([state.folders, state.datasources, state.dashboards], sort_keys=True)
    assert again == snapshot, "a second push changed what Grafana holds"
    calls = [(m, p) for m, p, _ in state.requests[sent:]]
    assert ("POST", "/api/folders") not in calls
    assert ("PUT", f"/api/datasources/uid/{PROMETHEUS_UID}") in calls
    assert ("POST", "/api/datasources") not in calls
    assert "folder tunefleet: exists" in second.stdout
    assert "datasource tunefleet-prometheus: updated" in second.stdout
    assert TOKEN not in first.stdout + first.stderr + second.stdout + second.stderr


def test_the_token_comes_from_a_file_and_never_an_argument(tmp_path: Path, grafana) -> None:
    state, url = grafana
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    ok = _push(url, tmp_path, "--token-file", str(token_file), token=None)
    assert ok.returncode == 0, ok.stderr
    assert set(state.datasources) == {PROMETHEUS_UID}  # no --db: no PostgreSQL datasource
    none = _push(url, tmp_path, token=None)
    assert none.returncode == 2 and "TUNEFLEET_GRAFANA_TOKEN" in none.stderr
    bad = _push(url, tmp_path, "--token", TOKEN, token=None)
    assert bad.returncode == 2 and "No such option" in bad.stderr


@pytest.mark.parametrize(
    ("extra", "token", "code", "says"),
    [
        ((), "wrong", 1, "Grafana answered 401: Invalid API key"),
        (("--db", "sqlite:///x.db"), TOKEN, 2, "--db"),
        (("--token-file", "/nonexistent/token"), None, 2, "cannot read /nonexistent/token"),
    ],
)
def test_push_errors_are_one_line(
    tmp_path: Path, grafana, extra: tuple[str, ...], token: str | None, code: int, says: str
) -> None:
    _, url = grafana
    out = _push(url, tmp_path, *extra, token=token)
    assert out.returncode == code, out.stderr
    assert says in out.stderr and len(out.stderr.splitlines()) == 1
    assert "Traceback" not in out.stderr


def test_an_unreachable_grafana_is_one_line(tmp_path: Path) -> None:
    out = _push("http://127.0.0.1:9", tmp_path)
    assert out.returncode == 1 and out.stderr.startswith("tunefleet: error: cannot reach Grafana")
    assert len(out.stderr.splitlines()) == 1
