"""Grafana in k8s/: its provisioning ConfigMaps are what dashboards/ generates, they are mounted
where Grafana and the dashboard provider read them, the datasources reach the fleet's services,
and no credential is written in them."""

from __future__ import annotations

import importlib.metadata
import json
import re
from typing import Any

import pytest
import yaml
from k8s_support import GRAFANA_PASSWORD_KEY, K8S, OVERLAYS, credential_leaks, render

from tunefleet.coordinator import k8s_jobs
from tunefleet.dashboards.grafana_json import exported_files
from tunefleet.dashboards.panels import DASHBOARDS, POSTGRES_UID, PROMETHEUS_UID

GRAFANA = K8S / "base" / "grafana"
EXPORT = "run 'tunefleet dashboards export k8s/base/grafana' and commit the result"
PROVISIONING = "/etc/grafana/provisioning"  # where the image's Grafana reads provisioning files
APPLY_LIMIT = 262144  # bytes of annotations: `kubectl apply` keeps the object in one


def _one(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [r for r in resources if (r["kind"], r["metadata"]["name"]) == (kind, name)]
    return found


def _grafana(overlay: str) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """The overlay's resources, Grafana's pod spec and its container."""
    resources = render(f"overlays/{overlay}")
    pod = _one(resources, "Deployment", "tunefleet-grafana")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return resources, pod, container


def _mounted_config_maps(overlay: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """mount path -> (volume name, the rendered ConfigMap) of each ConfigMap Grafana mounts."""
    resources, pod, container = _grafana(overlay)
    config_maps = {r["metadata"]["name"]: r for r in resources if r["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounted = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            assert name in config_maps, f"volume {mount['name']} names a missing ConfigMap {name}"
            mounted[mount["mountPath"]] = (mount["name"], config_maps[name])
    return mounted


def test_the_committed_k8s_copies_are_what_the_code_generates() -> None:
    generated = exported_files()
    committed = {
        str(p.relative_to(GRAFANA)): p.read_text()
        for folder in ("dashboards", "provisioning")
        for p in (GRAFANA / folder).rglob("*")
        if p.is_file()
    }
    assert set(committed) == set(generated), EXPORT
    for rel, text in generated.items():
        assert committed[rel] == text, f"k8s/base/grafana/{rel} is stale: {EXPORT}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_config_maps_hold_the_three_dashboards_and_the_datasources(overlay: str) -> None:
    generated = exported_files()
    mounted = _mounted_config_maps(overlay)
    _, dashboards = mounted["/var/lib/grafana/dashboards/tunefleet"]
    assert set(dashboards["data"]) == {"fleet.json", "job.json", "records.json"}
    for key, text in dashboards["data"].items():
        assert text == generated[f"dashboards/{key}"]
        name = key.removesuffix(".json")
        assert json.loads(text)["uid"] == DASHBOARDS[name].uid
    _, datasources = mounted[f"{PROVISIONING}/datasources"]
    (text,) = datasources["data"].values()
    assert text == generated["provisioning/datasources/tunefleet.yaml"]
    uids = {d["uid"]: d["type"] for d in yaml.safe_load(text)["datasources"]}
    assert set(uids) == {PROMETHEUS_UID, POSTGRES_UID}
    _, providers = mounted[f"{PROVISIONING}/dashboards"]
    (text,) = providers["data"].values()
    assert text == generated["provisioning/dashboards/tunefleet.yaml"]
    assert json.loads(dashboards["data"]["job.json"])["uid"] == "tunefleet-job"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_provider_reads_the_folder_the_dashboards_are_mounted_at(overlay: str) -> None:
    mounted = _mounted_config_maps(overlay)
    _, providers = mounted[f"{PROVISIONING}/dashboards"]
    (provider,) = yaml.safe_load(next(iter(providers["data"].values())))["providers"]
    assert provider["type"] == "file"
    volume, config_map = mounted[provider["options"]["path"]]
    assert volume == "dashboards"
    assert config_map["metadata"]["name"].startswith("tunefleet-grafana-dashboards-")
    assert set(mounted) == {
        provider["options"]["path"], f"{PROVISIONING}/datasources", f"{PROVISIONING}/dashboards"
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_datasources_reach_the_fleets_prometheus_and_postgres(overlay: str) -> None:
    resources, _, container = _grafana(overlay)
    env = {e["name"]: e for e in container["env"]}
    datasources = _mounted_config_maps(overlay)[f"{PROVISIONING}/datasources"][1]
    (text,) = datasources["data"].values()
    values = yaml.safe_dump(yaml.safe_load(text))  # without the comments
    wanted = set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", values))
    assert wanted and wanted <= set(env), f"Grafana's env lacks {sorted(wanted - set(env))}"

    def service_port(name: str) -> int:
        (port,) = _one(resources, "Service", name)["spec"]["ports"]
        return port["port"]

    url = env["TUNEFLEET_PROMETHEUS_URL"]["value"]
    assert url == f"http://tunefleet-prometheus:{service_port('tunefleet-prometheus')}"
    assert env["TUNEFLEET_PG_HOST"]["value"] == (
        f"tunefleet-postgres:{service_port('tunefleet-postgres')}"
    )
    postgres = _one(resources, "StatefulSet", "tunefleet-postgres")
    pg_env = {e["name"]: e for e in postgres["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TUNEFLEET_PG_USER"]["value"] == pg_env["POSTGRES_USER"]["value"]
    assert env["TUNEFLEET_PG_DATABASE"]["value"] == pg_env["POSTGRES_DB"]["value"]
    assert env["TUNEFLEET_PG_PASSWORD"]["valueFrom"] == pg_env["POSTGRES_PASSWORD"]["valueFrom"]
    assert env["TUNEFLEET_PG_SSLMODE"]["value"] == "disable"  # the StatefulSet serves no TLS
    assert env["GF_SECURITY_ADMIN_PASSWORD"]["valueFrom"] == {
        "secretKeyRef": {"name": k8s_jobs.CREDENTIALS_SECRET, "key": GRAFANA_PASSWORD_KEY}
    }


def test_the_image_is_the_grafana_line_of_the_dashboard_schema() -> None:
    _, _, container = _grafana("cpu")
    sdk = importlib.metadata.version("grafana-foundation-sdk").split("!")[-1]
    match = re.fullmatch(r"grafana/grafana:(\d+)\.(\d+)\.\d+", container["image"])
    assert match, f"{container['image']}: pin an exact grafana/grafana release"
    assert match.groups() == tuple(sdk.split(".")[:2]), f"the SDK builds Grafana {sdk} JSON"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grafana_is_probed_on_its_health_endpoint_and_served(overlay: str) -> None:
    resources, pod, container = _grafana(overlay)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/api/health" and ports[get["port"]] == 3000, probe
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    service = _one(resources, "Service", "tunefleet-grafana")
    deployment = _one(resources, "Deployment", "tunefleet-grafana")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == 3000 and port["targetPort"] in ports
    assert pod["securityContext"]["runAsNonRoot"] is True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_config_map_fits_what_kubectl_apply_can_record(overlay: str) -> None:
    # client-side `kubectl apply` copies the object into an annotation of at most 256 KiB
    for res in render(f"overlays/{overlay}"):
        if res["kind"] == "ConfigMap":
            size = len(json.dumps(res, separators=(",", ":")))
            assert size < APPLY_LIMIT, f"{res['metadata']['name']}: {size} bytes"


def test_the_scan_finds_a_password_written_into_grafanas_manifests() -> None:
    resources, _, container = _grafana("cpu")
    for var in container["env"]:
        if var["name"] == "GF_SECURITY_ADMIN_PASSWORD":
            var.pop("valueFrom")
            var["value"] = "hunter2"
    prefix = "tunefleet-grafana-datasources-"
    (datasources,) = [r for r in resources
                      if r["kind"] == "ConfigMap" and r["metadata"]["name"].startswith(prefix)]
    (key,) = datasources["data"]
    datasources["data"][key] = datasources["data"][key].replace("$TUNEFLEET_PG_PASSWORD", "hunter2")
    leaks = credential_leaks(resources)
    assert len(leaks) == 2, leaks
    assert any("GF_SECURITY_ADMIN_PASSWORD has an inline value" in leak for leak in leaks)
    assert any("secureJsonData.password: an inline value" in leak for leak in leaks)
