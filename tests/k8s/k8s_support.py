"""What the Kubernetes tests share: kubectl (kustomize) renders the overlays, and a scan finds
credentials a manifest must never hold.

kubectl is part of the machines CI runs on; where it is missing these tests skip with the reason
on a developer's machine and fail under CI (CI=true), so CI can never pass without rendering.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.32.0"  # the version built-in kinds are validated at (kubernetes-validate)
GRAFANA_PASSWORD_KEY = "grafana-admin-password"  # the Secret's key of Grafana's admin password

# a URL with a password that is not a $(VAR) reference Kubernetes fills in from a Secret
_URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]*:(?!\$\()[^@\s/]+@")
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|credential", re.IGNORECASE)


def kubectl_path() -> str:
    path = shutil.which("kubectl")
    if path is None:
        reason = "kubectl is not installed: it renders the kustomize overlays"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must render them")
        pytest.skip(reason)
    return path


@cache
def _render(path: str) -> str:
    done = subprocess.run(
        [kubectl_path(), "kustomize", path], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def render(part: str) -> list[dict[str, Any]]:
    """The resources `kubectl kustomize k8s/PART` renders (fresh dicts on every call)."""
    return [doc for doc in yaml.safe_load_all(_render(str(K8S / part))) if doc]


def pod_templates(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every Ray pod a RayCluster or RayJob describes."""
    spec = resource["spec"]
    cluster = spec.get("rayClusterSpec", spec) if resource["kind"] == "RayJob" else spec
    if "headGroupSpec" in cluster:
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"worker group {group['groupName']}", group["template"]
    if "submitterPodTemplate" in spec:
        yield "submitter", spec["submitterPodTemplate"]


def credential_leaks(resources: list[dict[str, Any]]) -> list[str]:
    """Where a manifest holds a credential: a Secret object, an env var whose name says it is
    secret but whose value is inline, a URL with a password written into it, or a file of a
    ConfigMap (Grafana's datasources) whose password-like field is not a $VARIABLE reference."""
    leaks = []
    for res in resources:
        name = f"{res.get('kind')}/{res.get('metadata', {}).get('name')}"
        if res.get("kind") == "Secret":
            leaks.append(f"{name}: a Secret belongs in the cluster, not in the manifests")
        for path, node in _walk(res):
            if isinstance(node, str) and _URL_WITH_PASSWORD.search(node):
                leaks.append(f"{name} {path}: a URL with a password in it")
            if isinstance(node, dict) and "name" in node and "value" in node:
                if _SECRET_NAME.search(str(node["name"])):
                    leaks.append(f"{name} {path}: {node['name']} has an inline value")
        if res.get("kind") == "ConfigMap":
            for key, text in (res.get("data") or {}).items():
                leaks += [f"{name} data.{key}{where}: an inline value, not a $VARIABLE"
                          for where in _inline_secret_fields(text)]  # fmt: skip
    return leaks


def _inline_secret_fields(text: str) -> list[str]:
    """Paths of the password-like fields of a YAML or JSON file whose value is written in it
    (Grafana expands `$VAR`, `${VAR}` and `$__env{VAR}` from its environment when it reads one)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    found = []
    for path, node in _walk(doc):
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if (_SECRET_NAME.search(str(key)) and isinstance(value, str) and value
                    and not value.startswith("$")):
                found.append(f"{path}.{key}")
    return found


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")
