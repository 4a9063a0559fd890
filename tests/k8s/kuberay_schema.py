"""Validation of RayCluster and RayJob manifests against KubeRay's CRD schemas.

k8s/schemas/kuberay-VERSION/ keeps the CRDs' openAPIV3Schema for KubeRay's own fields, with each
embedded core Kubernetes type replaced by a marker {"x-core-type": DEFINITION} (see the README
there). This module turns such a schema into a JSON schema in which every marker refers to that
definition in kubernetes-validate's bundled (strict) schemas for a Kubernetes version, so one
jsonschema pass checks KubeRay's fields and the core types inside them.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from kubernetes_validate import utils as kv
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "k8s" / "schemas"
KUBERAY_VERSION = "v1.2"  # the folder under k8s/schemas/ the manifests are checked against
SCHEMA_FILES = {
    ("ray.io/v1", "RayCluster"): "raycluster.json",
    ("ray.io/v1", "RayJob"): "rayjob.json",
}
CORE_MARKER = "x-core-type"

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_FORMATS = jsonschema.FormatChecker(formats=())
for _name, (_low, _high) in _INT_RANGES.items():
    _FORMATS.checks(_name)(
        lambda value, low=_low, high=_high: not isinstance(value, int) or low <= value <= high
    )


def core_definitions(kubernetes_version: str) -> dict[str, Any]:
    """kubernetes-validate's strict definitions for the newest bundled version not above
    kubernetes_version (the version choice kubernetes_validate.validate makes)."""
    wanted = kv.major_minor(kubernetes_version.removeprefix("v"))
    bundled = [v for v in kv.all_versions() if kv.major_minor(v) <= wanted]
    if not bundled:
        raise kv.VersionNotSupportedError(kubernetes_version)
    path = f"kubernetes-json-schema/v{bundled[-1]}-local-strict/_definitions.json"
    return kv.schema_contents(path, kubernetes_version)


def to_json_schema(node: dict[str, Any], definitions_id: str) -> dict[str, Any]:
    """A CRD (structural OpenAPI v3) schema as a JSON schema: markers become references to the
    core definitions, objects with listed properties refuse unknown fields (as the API server
    does under kubectl's default strict field validation), `nullable` admits null."""
    if CORE_MARKER in node:
        ref: dict[str, Any] = {"$ref": f"{definitions_id}#/$defs/{node[CORE_MARKER]}"}
        # the CRD may narrow fields of the core type (the embedded metadata): check those too
        narrowed = node.get("properties", {})
        if not narrowed:
            return ref
        props = {name: to_json_schema(sub, definitions_id) for name, sub in narrowed.items()}
        return {"allOf": [ref, {"properties": props}]}
    out = dict(node)
    if "properties" in node:
        out["properties"] = {
            name: to_json_schema(sub, definitions_id) for name, sub in node["properties"].items()
        }
        if "additionalProperties" not in node and not node.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            out["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"], definitions_id)
    if "items" in node:
        out["items"] = to_json_schema(node["items"], definitions_id)
    if "anyOf" in node:
        out["anyOf"] = [to_json_schema(sub, definitions_id) for sub in node["anyOf"]]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def _validator(
    schema_file: str, kuberay_version: str, kubernetes_version: str
) -> jsonschema.Draft202012Validator:
    crd_schema = json.loads((SCHEMAS / f"kuberay-{kuberay_version}" / schema_file).read_text())
    definitions = core_definitions(kubernetes_version)
    resource = Resource.from_contents(definitions)
    schema = to_json_schema(crd_schema, definitions["$id"])
    registry = Registry().with_resource(definitions["$id"], resource)
    return jsonschema.Draft202012Validator(schema, registry=registry, format_checker=_FORMATS)


def kuberay_errors(
    manifest: dict[str, Any],
    kubernetes_version: str,
    kuberay_version: str = KUBERAY_VERSION,
) -> list[str]:
    """What is wrong with a RayCluster or RayJob manifest under KubeRay's CRD schema: one line
    per error, `path: message`, in document order; [] when it is valid."""
    key = (manifest.get("apiVersion"), manifest.get("kind"))
    if key not in SCHEMA_FILES:
        kinds = ", ".join(f"{kind} ({api})" for api, kind in SCHEMA_FILES)
        return [f"{key[1]} ({key[0]}) is not one of the KubeRay kinds checked here: {kinds}"]
    validator = _validator(SCHEMA_FILES[key], kuberay_version, kubernetes_version)
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    return [f"{_path(err)}: {err.message}" for err in errors]


def _path(err: jsonschema.ValidationError) -> str:
    path = ""
    for part in err.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path or "."
