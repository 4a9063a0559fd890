"""The kustomize base and overlays of k8s/: they render, the built-in kinds are valid for a named
Kubernetes version, the Ray pods are valid pod templates, and no credential is written in them."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import yaml
from k8s_support import (
    GRAFANA_PASSWORD_KEY,
    K8S,
    KUBERNETES_VERSION,
    OVERLAYS,
    ROOT,
    credential_leaks,
    pod_templates,
    render,
)
from kuberay_schema import kuberay_errors

from tunefleet.coordinator import k8s_jobs

BUILT_IN = {
    "Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service",
    "PersistentVolumeClaim", "Deployment", "StatefulSet",
}  # fmt: skip


def validate_pod_template(template: dict, where: str) -> None:
    """A Ray pod template is a core/v1 PodTemplateSpec: validate it as a PodTemplate object."""
    wrapped = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "ray-pod"},
        "template": template,
    }
    try:
        kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{where}: {err.message} at {'.'.join(map(str, err.path))}")


@pytest.mark.parametrize("part", ["base", *(f"overlays/{o}" for o in OVERLAYS)])
def test_every_resource_is_valid_for_the_named_kubernetes_and_kuberay_versions(part: str) -> None:
    resources = render(part)
    kinds = {r["kind"] for r in resources}
    assert kinds == BUILT_IN - ({"Namespace"} if part == "base" else set()) | {"RayCluster"}
    for res in resources:
        if res["kind"] == "RayCluster":  # KubeRay's kind: its CRD schema (k8s/schemas/)
            assert kuberay_errors(res, KUBERNETES_VERSION) == [], res["metadata"]["name"]
            continue
        try:
            kubernetes_validate.validate(res, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{res['kind']}/{res['metadata']['name']}: {err.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_ray_pods_are_valid_pod_templates_with_the_fleet_image(overlay: str) -> None:
    (cluster,) = [r for r in render(f"overlays/{overlay}") if r["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["namespace"] == "tunefleet"
    templates = list(pod_templates(cluster))
    assert [where for where, _ in templates] == ["head", f"worker group {overlay}"]
    for where, template in templates:
        validate_pod_template(template, where)
        (container,) = template["spec"]["containers"]
        assert container["image"] == k8s_jobs.default_image(), "kustomize images: applied"


def test_the_pod_template_check_rejects_a_malformed_pod() -> None:
    (cluster,) = [r for r in render("overlays/cpu") if r["kind"] == "RayCluster"]
    template = cluster["spec"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["ports"][0]["containerPort"] = "six"
    with pytest.raises(pytest.fail.Exception, match="containerPort"):
        validate_pod_template(template, "head")


def test_the_gpu_overlay_asks_for_gpus_within_autoscaling_bounds() -> None:
    (cluster,) = [r for r in render("overlays/gpu") if r["kind"] == "RayCluster"]
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] > group["minReplicas"], "the autoscaler has room to scale"
    pod = group["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})


def test_the_cpu_overlay_has_no_gpu_anywhere() -> None:
    text = yaml.safe_dump_all(render("overlays/cpu"))
    assert "nvidia.com/gpu" not in text
    (cluster,) = [r for r in render("overlays/cpu") if r["kind"] == "RayCluster"]
    assert [g["groupName"] for g in cluster["spec"]["workerGroupSpecs"]] == ["cpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_password_or_secret_is_written_in_a_rendered_manifest(overlay: str) -> None:
    resources = render(f"overlays/{overlay}")
    assert credential_leaks(resources) == []
    # every credential comes from the one Secret users create, by the documented keys
    refs = set()
    for res in resources:
        text = yaml.safe_dump(res)
        refs |= set(re.findall(r"secretKeyRef:\n\s+key: (\S+)\n\s+name: (\S+)", text))
    assert refs == {
        (k8s_jobs.POSTGRES_PASSWORD_KEY, k8s_jobs.CREDENTIALS_SECRET),
        (k8s_jobs.REDIS_PASSWORD_KEY, k8s_jobs.CREDENTIALS_SECRET),
        (GRAFANA_PASSWORD_KEY, k8s_jobs.CREDENTIALS_SECRET),
    }


def test_the_credential_scan_finds_inline_passwords() -> None:
    want = ("StatefulSet", "tunefleet-postgres")
    (postgres,) = [r for r in render("overlays/cpu") if (r["kind"], r["metadata"]["name"]) == want]
    env = postgres["spec"]["template"]["spec"]["containers"][0]["env"]
    for var in env:
        if var["name"] == "POSTGRES_PASSWORD":
            var.pop("valueFrom")
            var["value"] = "hunter2"
    env.append({"name": "TUNEFLEET_DB_URL", "value": "postgresql://tunefleet:hunter2@db/x"})
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tunefleet-credentials"},
              "stringData": {"postgres-password": "hunter2"}}  # fmt: skip
    leaks = credential_leaks([postgres, secret])
    assert len(leaks) == 3, leaks
    assert any("POSTGRES_PASSWORD has an inline value" in leak for leak in leaks)
    assert any("a URL with a password" in leak for leak in leaks)
    assert any(leak.startswith("Secret/") for leak in leaks)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_the_ports_the_ray_containers_name(overlay: str) -> None:
    resources = render(f"overlays/{overlay}")
    (config_map,) = [r for r in resources
                     if r["kind"] == "ConfigMap" and "prometheus.yml" in r["data"]]
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    kept_ports = {}
    for job in config["scrape_configs"]:
        for rule in job.get("relabel_configs", []):
            if rule["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]:
                assert rule["action"] == "keep"
                kept_ports[job["job_name"]] = rule["regex"]
        for sd in job.get("kubernetes_sd_configs", []):
            assert sd == {"role": "pod", "namespaces": {"own_namespace": True}}
    assert kept_ports == {"ray": "metrics", "tunefleet": "coordinator"}
    (cluster,) = [r for r in resources if r["kind"] == "RayCluster"]
    for where, template in pod_templates(cluster):
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == k8s_jobs.RAY_METRICS_PORT == 8080, where
        assert ports["coordinator"] == k8s_jobs.COORDINATOR_METRICS_PORT == 9400, where
    # the Deployment mounts that ConfigMap (kustomize renamed it with a hash) and may list pods
    (deployment,) = [r for r in resources if (r["kind"], r["metadata"]["name"]) == (
        "Deployment", "tunefleet-prometheus")]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    (role,) = [r for r in resources if r["kind"] == "Role"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]


def test_the_image_ray_version_matches_the_manifests_and_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (from_line,) = [line for line in dockerfile.splitlines() if line.startswith("ARG CUDA_IMAGE=")]
    assert re.fullmatch(r"ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-devel-ubuntu[\d.]+", from_line)
    assert "FROM ${CUDA_IMAGE}" in dockerfile
    assert 'pip install "tunefleet[cuda] @ file:///src"' in dockerfile
    (ray_arg,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.MULTILINE)
    base = yaml.safe_load((K8S / "base/ray/raycluster.yaml").read_text())
    assert ray_arg == base["spec"]["rayVersion"] == k8s_jobs.RAY_VERSION
