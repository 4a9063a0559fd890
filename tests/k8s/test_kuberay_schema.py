"""The check against KubeRay's CRD schemas (k8s/schemas/): its markers name real core
definitions, and it fails where KubeRay's API server would refuse a RayCluster. That every
rendered RayCluster and every dry-run RayJob passes it is tested beside the other checks of
those manifests (test_k8s_manifests.py, test_k8s_rayjob.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from k8s_support import KUBERNETES_VERSION, render
from kuberay_schema import (
    CORE_MARKER,
    KUBERAY_VERSION,
    SCHEMA_FILES,
    SCHEMAS,
    core_definitions,
    kuberay_errors,
)


def raycluster(part: str) -> dict[str, Any]:
    (cluster,) = [r for r in render(part) if r["kind"] == "RayCluster"]
    return cluster


def markers(node: Any) -> list[str]:
    """Every core definition the schema's markers name."""
    if isinstance(node, dict):
        found = [node[CORE_MARKER]] if CORE_MARKER in node else []
        return found + [name for sub in node.values() for name in markers(sub)]
    if isinstance(node, list):
        return [name for sub in node for name in markers(sub)]
    return []


@pytest.mark.parametrize("schema_file", sorted(SCHEMA_FILES.values()))
def test_every_marker_names_a_core_definition_of_the_kubernetes_version(schema_file: str) -> None:
    schema = json.loads((SCHEMAS / f"kuberay-{KUBERAY_VERSION}" / schema_file).read_text())
    named = set(markers(schema))
    assert "io.k8s.api.core.v1.PodTemplateSpec" in named
    missing = named - set(core_definitions(KUBERNETES_VERSION)["$defs"])
    assert missing == set()


def test_the_schema_files_are_sorted_json() -> None:
    for schema_file in SCHEMA_FILES.values():
        text = (SCHEMAS / f"kuberay-{KUBERAY_VERSION}" / schema_file).read_text()
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n", schema_file


def test_an_unknown_field_under_head_group_spec_fails() -> None:
    cluster = raycluster("overlays/cpu")
    cluster["spec"]["headGroupSpec"]["replicas"] = 1
    assert kuberay_errors(cluster, KUBERNETES_VERSION) == [
        ".spec.headGroupSpec: Additional properties are not allowed ('replicas' was unexpected)"
    ]


def test_replicas_as_a_string_fails() -> None:
    cluster = raycluster("overlays/gpu")
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = "2"
    assert kuberay_errors(cluster, KUBERNETES_VERSION) == [
        ".spec.workerGroupSpecs[0].replicas: '2' is not of type 'integer'"
    ]


def test_replicas_beyond_int32_fails() -> None:
    cluster = raycluster("overlays/gpu")
    cluster["spec"]["workerGroupSpecs"][0]["maxReplicas"] = 2**31
    assert kuberay_errors(cluster, KUBERNETES_VERSION) == [
        ".spec.workerGroupSpecs[0].maxReplicas: 2147483648 is not a 'int32'"
    ]


@pytest.mark.parametrize(
    ("path", "field"),
    [("spec.headGroupSpec", "rayStartParams"), ("spec.workerGroupSpecs.0", "minReplicas"),
     ("spec.workerGroupSpecs.0", "groupName"), ("spec", "headGroupSpec")],
)  # fmt: skip
def test_a_missing_required_field_fails(path: str, field: str) -> None:
    cluster = raycluster("overlays/cpu")
    parent: Any = cluster
    for key in path.split("."):
        parent = parent[int(key)] if key.isdigit() else parent[key]
    del parent[field]
    where = "." + path.replace(".0", "[0]")
    assert kuberay_errors(cluster, KUBERNETES_VERSION) == [
        f"{where}: '{field}' is a required property"
    ]


def test_a_bad_core_field_inside_a_pod_template_fails() -> None:
    cluster = raycluster("overlays/cpu")
    container = cluster["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    container["resources"]["limit"] = container["resources"].pop("limits")
    container["ports"][0]["containerPort"] = "8080"
    errors = kuberay_errors(cluster, KUBERNETES_VERSION)
    where = ".spec.workerGroupSpecs[0].template.spec.containers[0]"
    assert errors == [
        f"{where}.ports[0].containerPort: '8080' is not of type 'integer'",
        f"{where}.resources: Additional properties are not allowed ('limit' was unexpected)",
    ]


def test_the_pod_template_metadata_is_as_narrow_as_the_crd_states() -> None:
    """KubeRay's CRD keeps five fields of an embedded ObjectMeta: others are refused even though
    a core PodTemplateSpec would take them."""
    cluster = raycluster("overlays/cpu")
    cluster["spec"]["headGroupSpec"]["template"]["metadata"]["generateName"] = "ray-"
    assert kuberay_errors(cluster, KUBERNETES_VERSION) == [
        ".spec.headGroupSpec.template.metadata: "
        "Additional properties are not allowed ('generateName' was unexpected)"
    ]


def test_core_types_outside_pod_templates_are_checked_too() -> None:
    cluster = raycluster("overlays/gpu")
    cluster["spec"]["autoscalerOptions"] = {
        "upscalingMode": "Fast",
        "env": [{"name": "X", "valu": "1"}],
        "resources": {"limits": {"cpu": "1"}},
    }
    cluster["spec"]["headGroupSpec"]["headService"] = {"spec": {"type": 3}}
    assert kuberay_errors(cluster, KUBERNETES_VERSION) == [
        ".spec.autoscalerOptions.env[0]: Additional properties are not allowed "
        "('valu' was unexpected)",
        ".spec.autoscalerOptions.upscalingMode: 'Fast' is not one of "
        "['Default', 'Aggressive', 'Conservative']",
        ".spec.headGroupSpec.headService.spec.type: 3 is not of type 'string', 'null'",
    ]


def test_a_kind_without_a_kuberay_schema_is_named() -> None:
    cluster = raycluster("overlays/cpu")
    cluster["apiVersion"] = "ray.io/v1alpha1"
    (error,) = kuberay_errors(cluster, KUBERNETES_VERSION)
    assert error.startswith("RayCluster (ray.io/v1alpha1) is not one of the KubeRay kinds")
