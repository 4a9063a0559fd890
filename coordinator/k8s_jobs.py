"""Model jobs on Kubernetes: the KubeRay RayJob (ray.io/v1) of `tunefleet job submit --k8s`.

The RayJob runs a job's command (`ray_jobs.tune_entrypoint` for a new job, `ray_jobs.entrypoint`
for a job of the cluster's database) either on a Ray cluster of its own (`rayClusterSpec`: a head
and one worker group of the target's kind, deleted `ttlSecondsAfterFinished` after the job) or on
a running RayCluster picked by name (`clusterSelector`, e.g. the `tunefleet` cluster of k8s/).
The database and Redis URLs reach the Ray containers as environment variables that Kubernetes
composes from the Secret `tunefleet-credentials`: the manifest names the Secret's keys and never
holds a password. Containers, env and ports match k8s/base/ray/raycluster.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tunefleet.coordinator.ray_jobs import entrypoint_resources

GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"
CREDENTIALS_SECRET = "tunefleet-credentials"
POSTGRES_PASSWORD_KEY = "postgres-password"
REDIS_PASSWORD_KEY = "redis-password"
DB_URL = "postgresql+psycopg://tunefleet:$(TUNEFLEET_DB_PASSWORD)@tunefleet-postgres:5432/tunefleet"
REDIS_URL = "redis://:$(TUNEFLEET_REDIS_PASSWORD)@tunefleet-redis:6379/0"
RAY_VERSION = "2.52.0"  # the Ray of the image (Dockerfile's RAY_VERSION)
RAY_METRICS_PORT = 8080  # Ray's metrics export port on every node
COORDINATOR_METRICS_PORT = 9400  # the coordinator's Prometheus port (`--metrics-port 9400`)
DEFAULT_NAMESPACE = "tunefleet"
SUBMISSION_MODE = "K8sJobMode"  # a Kubernetes Job runs `ray job submit` and follows the logs
TTL_AFTER_FINISHED_S = 600  # a job's own cluster stays this long after it ends, for its logs
MAX_NAME = 40  # KubeRay derives the cluster's and services' names from the RayJob's


class K8sJobError(RuntimeError):
    """No kubeconfig, an unreachable or refusing API server, or a RayJob that exists already;
    the message is one line without credentials."""


def default_image() -> str:
    """The image the Dockerfile builds for this version: `tunefleet:VERSION`."""
    try:
        return f"tunefleet:{version('tunefleet')}"
    except PackageNotFoundError:
        return "tunefleet:latest"


@dataclass(frozen=True)
class RayJobOptions:
    """Where and on what a RayJob runs."""

    namespace: str = DEFAULT_NAMESPACE
    image: str = ""  # the tunefleet image of the job's own cluster ("" = default_image())
    cluster: str | None = None  # run on this existing RayCluster instead of a cluster of its own
    ttl_s: int = TTL_AFTER_FINISHED_S


def credential_env() -> list[dict[str, Any]]:
    """The env of every Ray container: the passwords from the Secret, then the URLs that
    Kubernetes composes from them ($(VAR) expands a variable defined before it)."""
    return [
        _secret_env("TUNEFLEET_DB_PASSWORD", POSTGRES_PASSWORD_KEY),
        _secret_env("TUNEFLEET_REDIS_PASSWORD", REDIS_PASSWORD_KEY),
        {"name": "TUNEFLEET_DB_URL", "value": DB_URL},
        {"name": "TUNEFLEET_REDIS_URL", "value": REDIS_URL},
    ]


def ray_container(name: str, image: str, *, head: bool, gpu: bool = False) -> dict[str, Any]:
    """A Ray container of the fleet: its ports (Ray's and the coordinator's metrics, and on the
    head the GCS, dashboard and client), the credential env and its resources."""
    ports = [
        {"name": "metrics", "containerPort": RAY_METRICS_PORT},
        {"name": "coordinator", "containerPort": COORDINATOR_METRICS_PORT},
    ]
    if head:
        ports = [
            {"name": "gcs-server", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
            *ports,
        ]
        requests: dict[str, Any] = {"cpu": "2", "memory": "8Gi"}
        limits: dict[str, Any] = {"cpu": "4", "memory": "8Gi"}
    elif gpu:
        requests = limits = {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": 1}
    else:
        requests = limits = {"cpu": "4", "memory": "8Gi"}
    return {
        "name": name,
        "image": image,
        "ports": ports,
        "env": credential_env(),
        "resources": {"requests": dict(requests), "limits": dict(limits)},
    }


def ray_cluster_spec(image: str, target: str) -> dict[str, Any]:
    """The RayCluster spec of a job's own cluster: a head and one worker of the target's kind
    (a GPU worker for a CUDA target)."""
    gpu = target.startswith("cuda")
    labels = {"app.kubernetes.io/part-of": "tunefleet"}
    start = {"metrics-export-port": str(RAY_METRICS_PORT)}
    worker_pod: dict[str, Any] = {
        "containers": [ray_container("ray-worker", image, head=False, gpu=gpu)]
    }
    if gpu:
        worker_pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "rayVersion": RAY_VERSION,
        "headGroupSpec": {
            "rayStartParams": dict(start),
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {"containers": [ray_container("ray-head", image, head=True)]},
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "gpu" if gpu else "cpu",
                "replicas": 1,
                "minReplicas": 1,
                "maxReplicas": 1,
                "rayStartParams": dict(start),
                "template": {"metadata": {"labels": dict(labels)}, "spec": worker_pod},
            }
        ],
    }


def rayjob_name(label: str, entrypoint: str, options: RayJobOptions) -> str:
    """`tunefleet-LABEL-DIGEST`: the same command on the same cluster gets the same name, so
    submitting it twice is refused instead of running twice."""
    where = options.cluster or options.image or default_image()
    digest = hashlib.sha256(json.dumps([entrypoint, where, options.namespace]).encode())
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    slug = slug[: MAX_NAME - len("tunefleet--") - 8].strip("-") or "job"
    return f"tunefleet-{slug}-{digest.hexdigest()[:8]}"


def render_rayjob(
    entrypoint: str, label: str, target: str, workers: str, options: RayJobOptions
) -> dict[str, Any]:
    """The RayJob that runs `entrypoint`; `label` (the model, or `job-ID`) names it."""
    cpus, gpus = entrypoint_resources(target, workers)
    spec: dict[str, Any] = {
        "entrypoint": entrypoint,
        "submissionMode": SUBMISSION_MODE,
        "entrypointNumCpus": cpus,
    }
    if gpus:
        spec["entrypointNumGpus"] = gpus
    if options.cluster is not None:
        # the cluster is not the job's: it outlives the job
        spec["clusterSelector"] = {"ray.io/cluster": options.cluster}
        spec["shutdownAfterJobFinishes"] = False
    else:
        spec["shutdownAfterJobFinishes"] = True
        spec["ttlSecondsAfterFinished"] = options.ttl_s
        spec["rayClusterSpec"] = ray_cluster_spec(options.image or default_image(), target)
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "RayJob",
        "metadata": {
            "name": rayjob_name(label, entrypoint, options),
            "namespace": options.namespace,
            "labels": {"app.kubernetes.io/part-of": "tunefleet"},
        },
        "spec": spec,
    }


def manifest_yaml(manifest: Mapping[str, Any]) -> str:
    """The manifest as YAML, keys in the order they were built (`kubectl apply -f -` reads it)."""
    import yaml

    return yaml.safe_dump(dict(manifest), sort_keys=False, width=1 << 20)


def create_rayjob(manifest: Mapping[str, Any], kubeconfig: str | None = None) -> None:
    """Create the RayJob through the API server of the kubeconfig's current context
    (`kubeconfig`: a path or an os.pathsep list, default ~/.kube/config)."""
    try:
        import kubernetes  # noqa: F401
    except ModuleNotFoundError:
        raise K8sJobError(
            "the Kubernetes client is not installed: pip install 'tunefleet[k8s]'"
        ) from None
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api_client = _api_client(kubeconfig)
    host = api_client.configuration.host
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    api = client.CustomObjectsApi(api_client)
    try:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, dict(manifest), _request_timeout=(10, 60)
        )
    except ApiException as err:
        raise K8sJobError(_refusal(err, host, name, namespace)) from None
    except (HTTPError, OSError):
        raise K8sJobError(
            f"cannot reach the Kubernetes API server at {host} (the kubeconfig's current "
            "context): is the cluster up, and is this the context you meant?"
        ) from None
    finally:
        api_client.close()


# -- helpers -----------------------------------------------------------------------------------


def _secret_env(name: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": key}}}


def _api_client(kubeconfig: str | None) -> Any:
    """An ApiClient for the kubeconfig's current context, retrying a failed connection once."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    path = kubeconfig or str(Path("~/.kube/config").expanduser())
    if not any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p):
        raise K8sJobError(
            f"no kubeconfig at {path}: set KUBECONFIG to the file `kubectl` uses for the cluster"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=path, client_configuration=configuration, persist_config=False
        )
    except (ConfigException, ValueError, TypeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise K8sJobError(f"cannot use the kubeconfig {path}: {first}") from None
    configuration.retries = 1
    return client.ApiClient(configuration)


def _refusal(err: Any, host: str, name: str, namespace: str) -> str:
    """One line for an API server's refusal, from its Status reply."""
    try:
        message = str(json.loads(err.body).get("message", "")).strip()
    except (TypeError, ValueError):
        message = ""
    message = message.splitlines()[0] if message else str(err.reason)
    if err.status == 409:
        return (
            f"a RayJob named {name} already exists in namespace {namespace}: the same job was "
            f"submitted before (kubectl -n {namespace} get rayjob {name}); delete it to run again"
        )
    if err.status == 404 and "namespaces" in message:
        return (
            f"namespace {namespace} does not exist: apply k8s/overlays/cpu or gpu first "
            "(docs/deploy.md) or pass --namespace"
        )
    if err.status == 404:
        return (
            f"the cluster at {host} does not know RayJob (ray.io/v1): install the KubeRay "
            "operator first (docs/deploy.md)"
        )
    if err.status in (401, 403):
        return f"the Kubernetes API server at {host} refused to create the RayJob: {message}"
    return f"the Kubernetes API server at {host} answered {err.status}: {message}"
