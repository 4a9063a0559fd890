"""`tunefleet job submit --k8s`: the RayJob it renders (valid pods, credentials from the Secret
only, an entrypoint that parses back to the same job) and how it creates it through the
Kubernetes API, or says in one line why it cannot."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import KUBERNETES_VERSION, credential_leaks, pod_templates, render
from kuberay_schema import kuberay_errors
from test_k8s_manifests import validate_pod_template

from tunefleet.coordinator import k8s_jobs
from tunefleet.coordinator.cli import main
from tunefleet.coordinator.fleet_state import open_fleet_state
from tunefleet.coordinator.job_cli import job_config
from tunefleet.coordinator.jobs import JobConfig
from tunefleet.database import RecordStore
from tunefleet.tuner.cli import tune

DB_PASSWORD, REDIS_PASSWORD = "S3cretDbPw", "R3disPw"
SUBMIT = ["job", "submit", "--k8s"]
TUNING = [
    ["--model", "tiny", "--budget", "20"],
    ["--model", "llama-3-8b", "--budget", "7", "--time", "1.5m", "--phase", "prefill",
     "--set", "n=128:512,b=1", "--scheduler", "round-robin", "--target", "cuda",
     "--strategy", "random", "--seed", "3", "--batch-size", "8", "--workers", "ray"],
    ["--model", "qwen2-0.5b", "--budget", "3", "--time", "2h", "--phase", "decode,prefill",
     "--set", "m=4096", "--target", "cpu"],
]  # fmt: skip


@pytest.fixture(autouse=True)
def _credentials_in_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The submitting machine's own URLs carry passwords: none may reach a RayJob."""
    monkeypatch.setenv("TUNEFLEET_DB_URL", f"postgresql://tunefleet:{DB_PASSWORD}@db:5432/x")
    monkeypatch.setenv("TUNEFLEET_REDIS_URL", f"redis://:{REDIS_PASSWORD}@redis:6379/0")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))


def dry_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, dict[str, Any]]:
    """The printed RayJob, which must be valid under KubeRay's CRD schema (k8s/schemas/)."""
    assert main([*SUBMIT, "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    rayjob = yaml.safe_load(out)
    assert kuberay_errors(rayjob, KUBERNETES_VERSION) == []
    return out, rayjob


@pytest.mark.parametrize("tuning", TUNING, ids=["tiny", "all-options", "cpu-hours"])
def test_the_entrypoint_parses_back_to_the_same_job(
    capsys: pytest.CaptureFixture[str], tuning: list[str]
) -> None:
    _, rayjob = dry_run(capsys, *tuning)
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert argv[:2] == ["tunefleet", "tune"]
    p = tune.make_context("tune", argv[2:]).params
    rebuilt = job_config(
        p["model_spec"], target=p["target"], budget=p["budget"], time_text=p["time_text"],
        phase_text=p["phase_text"], set_text=p["set_text"], scheduler=p["scheduler"],
        strategy=p["strategy"], seed=p["seed"], batch_size=p["batch_size"],
    )  # fmt: skip
    s = dict(zip(tuning[::2], tuning[1::2], strict=True))
    wanted = job_config(
        s["--model"], target=s.get("--target", "cpu"), budget=int(s["--budget"]),
        time_text=s.get("--time"), phase_text=s.get("--phase", "decode,prefill"),
        set_text=s.get("--set", ""), scheduler=s.get("--scheduler", "gradient"),
        strategy=s.get("--strategy", "evolutionary"), seed=int(s.get("--seed", 0)),
        batch_size=int(s.get("--batch-size", 16)),
    )  # fmt: skip
    assert rebuilt == wanted
    assert p["workers"] == s.get("--workers", "local")
    # a cluster of its own: the coordinator serves metrics where the manifests' Prometheus looks
    assert p["metrics_port"] == k8s_jobs.COORDINATOR_METRICS_PORT


def test_a_job_of_its_own_cluster_is_shut_down_after_it_finishes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, rayjob = dry_run(capsys, *TUNING[1], "--image", "registry.example/tunefleet:1.2")
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    meta, spec = rayjob["metadata"], rayjob["spec"]
    assert meta["namespace"] == "tunefleet"
    assert meta["name"].startswith("tunefleet-llama-3-8b-") and len(meta["name"]) <= 40
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] == k8s_jobs.TTL_AFTER_FINISHED_S
    assert spec["submissionMode"] == "K8sJobMode"
    assert "clusterSelector" not in spec
    # a CUDA job measured by Ray's GPU actors (--workers ray): the entrypoint takes no GPU
    assert spec["entrypointNumCpus"] == 1 and "entrypointNumGpus" not in spec
    templates = dict(pod_templates(rayjob))
    assert list(templates) == ["head", "worker group gpu"]
    for where, template in templates.items():
        validate_pod_template(template, where)
        assert template["spec"]["containers"][0]["image"] == "registry.example/tunefleet:1.2"
    worker = templates["worker group gpu"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert credential_leaks([rayjob]) == []
    assert DB_PASSWORD not in out and REDIS_PASSWORD not in out


def test_a_cuda_job_measured_by_its_coordinator_reserves_a_gpu_for_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, rayjob = dry_run(capsys, "--model", "tiny", "--budget", "4", "--target", "cuda")
    assert rayjob["spec"]["entrypointNumGpus"] == 1


def test_a_job_on_a_running_cluster_selects_it_and_leaves_it_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out, rayjob = dry_run(capsys, *TUNING[0], "--cluster", "tunefleet", "--namespace", "fleet")
    spec = rayjob["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "tunefleet"}
    assert spec["shutdownAfterJobFinishes"] is False
    assert "rayClusterSpec" not in spec and "ttlSecondsAfterFinished" not in spec
    assert rayjob["metadata"]["namespace"] == "fleet"
    assert DB_PASSWORD not in out and REDIS_PASSWORD not in out
    assert "--metrics-port" not in spec["entrypoint"]  # two jobs on one head would clash on it


def test_an_existing_job_of_the_cluster_database_is_resumed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, rayjob = dry_run(capsys, "--job", "7", "--workers", "ray", "--cluster", "tunefleet")
    assert rayjob["spec"]["entrypoint"] == "tunefleet job resume 7 --workers ray"
    assert rayjob["metadata"]["name"].startswith("tunefleet-job-7-")


@pytest.mark.parametrize(
    "args",
    [*TUNING, [*TUNING[0], "--cluster", "tunefleet"], [*TUNING[1], "--cluster", "tunefleet"],
     ["--job", "7", "--target", "cuda"], ["--job", "7", "--cluster", "tunefleet"],
     [*TUNING[0], "--target", "cuda", "--image", "registry.example/tunefleet:1.2"]],
    ids=["tiny", "all-options", "cpu-hours", "tiny-on-cluster", "all-options-on-cluster",
         "resume-cuda", "resume-on-cluster", "cuda-image"],
)  # fmt: skip
def test_every_dry_run_rayjob_is_valid_for_kuberay(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    _, rayjob = dry_run(capsys, *args)  # dry_run checks it against the CRD schema
    spec = rayjob["spec"]
    assert ("clusterSelector" in spec) == ("--cluster" in args) != ("rayClusterSpec" in spec)


def test_the_rayjob_check_fails_on_what_kuberay_refuses(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, rayjob = dry_run(capsys, *TUNING[0])
    spec = rayjob["spec"]
    del spec["entrypoint"]
    spec["shutdownAfterJobFinish"] = spec.pop("shutdownAfterJobFinishes")
    spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = 1.5
    spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["restartPolicy"] = ["Never"]
    assert kuberay_errors(rayjob, KUBERNETES_VERSION) == [
        ".spec: 'entrypoint' is a required property",
        ".spec: Additional properties are not allowed ('shutdownAfterJobFinish' was unexpected)",
        ".spec.rayClusterSpec.headGroupSpec.template.spec.restartPolicy: ['Never'] is not of "
        "type 'string', 'null'",
        ".spec.rayClusterSpec.workerGroupSpecs[0].replicas: 1.5 is not of type 'integer'",
    ]


def test_the_same_job_gets_the_same_name_and_another_job_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = [dry_run(capsys, *args)[1]["metadata"]["name"]
             for args in (TUNING[0], TUNING[0], [*TUNING[0], "--seed", "1"])]  # fmt: skip
    assert names[0] == names[1] != names[2]


def test_dry_run_json_is_the_same_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    _, as_yaml = dry_run(capsys, *TUNING[2])
    assert main([*SUBMIT, "--dry-run", "--json", *TUNING[2]]) == 0
    assert json.loads(capsys.readouterr().out) == as_yaml


@pytest.mark.parametrize("group", ["head", "worker"])
def test_the_job_cluster_containers_match_the_fleet_raycluster(
    capsys: pytest.CaptureFixture[str], group: str
) -> None:
    """Env (credentials), ports and Ray's start parameters are the same as k8s/base's."""
    (base,) = [r for r in render("base") if r["kind"] == "RayCluster"]
    _, rayjob = dry_run(capsys, *TUNING[0])
    ours = rayjob["spec"]["rayClusterSpec"]
    assert ours["rayVersion"] == base["spec"]["rayVersion"]
    if group == "head":
        theirs_group, ours_group = base["spec"]["headGroupSpec"], ours["headGroupSpec"]
    else:
        theirs_group, ours_group = base["spec"]["workerGroupSpecs"][0], ours["workerGroupSpecs"][0]
    assert ours_group["rayStartParams"] == theirs_group["rayStartParams"]
    theirs_c = theirs_group["template"]["spec"]["containers"][0]
    ours_c = ours_group["template"]["spec"]["containers"][0]
    for key in ("name", "env", "ports"):
        assert ours_c[key] == theirs_c[key], key


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["job", "submit", "--dry-run", "--model", "tiny", "--budget", "2"], "--dry-run go with"),
        (["job", "submit", "--cluster", "x", "--address", "http://h:8265", "--model", "tiny"],
         "--cluster go with --k8s"),
        (["job", "submit", "--model", "tiny", "--budget", "2"], "--address URL (or use --k8s)"),
        ([*SUBMIT, "--address", "http://h:8265", "--model", "tiny", "--budget", "2"],
         "give it or --k8s"),
        ([*SUBMIT, "--db", "postgresql://u:pw@h/db", "--model", "tiny", "--budget", "2"],
         "--db does not go with --k8s"),
        ([*SUBMIT, "--redis", "redis://h:6379/0", "--model", "tiny", "--budget", "2"],
         "--redis does not go with --k8s"),
        ([*SUBMIT, "--model", "tests/coordinator/data/tiny_llama.json", "--budget", "2"],
         "must be a preset"),
        ([*SUBMIT, "--model", "tiny", "--budget", "2", "--namespace", "Bad_NS"],
         "not a Kubernetes name"),
        ([*SUBMIT, "--model", "tiny", "--budget", "2", "--cluster", "c", "--image", "i:1"],
         "--image is the image of a job's own cluster"),
        ([*SUBMIT, "--model", "tiny"], "--budget"),
        ([*SUBMIT, "--budget", "2"], "--model MODEL"),
        ([*SUBMIT, "--job", "3", "--model", "tiny"], "not both"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


# -- creating the RayJob -----------------------------------------------------------------------


class ApiServer:
    """A local HTTP server that answers the one request `create_rayjob` makes the way the
    Kubernetes API documents it (POST of the object to its collection; a Status object on
    failure) and records what it was sent. No Kubernetes API server can run on this machine."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.reply: tuple[int, dict[str, Any] | None] = (201, None)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append((self.command, self.path, body))
                status, reply = server.reply
                data = json.dumps(body if reply is None else reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"

    def status(self, code: int, reason: str, message: str) -> None:
        self.reply = (code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "message": message, "reason": reason, "code": code})  # fmt: skip


@pytest.fixture
def api_server() -> Iterator[ApiServer]:
    server = ApiServer()
    thread = threading.Thread(target=server.http.serve_forever, daemon=True)
    thread.start()
    yield server
    server.http.shutdown()
    server.http.server_close()


def write_kubeconfig(path: Path, server_url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server_url}}],
        "users": [{"name": "test", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))  # fmt: skip
    return path


def test_submit_creates_the_rayjob_it_would_print(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    api_server: ApiServer,
) -> None:  # fmt: skip
    _, printed = dry_run(capsys, *TUNING[1])
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api_server.url)))
    assert main([*SUBMIT, *TUNING[1]]) == 0
    out = capsys.readouterr().out
    ((method, path, body),) = api_server.requests
    assert (method, path) == ("POST", "/apis/ray.io/v1/namespaces/tunefleet/rayjobs")
    assert body == printed
    name = printed["metadata"]["name"]
    assert f"rayjob {name} created in namespace tunefleet" in out
    assert f"kubectl -n tunefleet logs -f job/{name}" in out


@pytest.mark.parametrize(
    ("status", "reason", "message", "needle"),
    [
        (409, "AlreadyExists", 'rayjobs.ray.io "x" already exists', "already exists in namespace"),
        (404, "NotFound", 'namespaces "tunefleet" not found', "namespace tunefleet does not exist"),
        (404, "NotFound", "the server could not find the requested resource",
         "install the KubeRay operator"),
        (403, "Forbidden", 'rayjobs.ray.io is forbidden: User "u" cannot create resource',
         "refused to create the RayJob: rayjobs.ray.io is forbidden"),
    ],
)  # fmt: skip
def test_an_api_server_refusal_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    api_server: ApiServer, status: int, reason: str, message: str, needle: str,
) -> None:  # fmt: skip
    api_server.status(status, reason, message)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", api_server.url)))
    assert main([*SUBMIT, *TUNING[0]]) == 1
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["missing", "unreachable", "malformed"])
def test_no_cluster_to_talk_to_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    case: str,
) -> None:  # fmt: skip
    kubeconfig = tmp_path / "kc"
    if case == "unreachable":
        write_kubeconfig(kubeconfig, f"http://127.0.0.1:{closed_port()}")
    elif case == "malformed":
        kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: nowhere\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert main([*SUBMIT, *TUNING[0]]) == 1
    err = capsys.readouterr().err
    needle = {"missing": "no kubeconfig at", "unreachable": "cannot reach the Kubernetes API",
              "malformed": "cannot use the kubeconfig"}[case]  # fmt: skip
    assert err.startswith("tunefleet: error: ") and needle in err, err
    assert err.count("\n") == 1 and DB_PASSWORD not in err


def test_the_entrypoint_finds_redis_in_the_env_as_the_cluster_sets_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:  # fmt: skip
    """`tune --model` reads TUNEFLEET_REDIS_URL (the RayJob's pods set it from the Secret):
    pointed at a closed port it fails on Redis, with the password masked."""
    monkeypatch.setenv("TUNEFLEET_DB_URL", str(tmp_path / "records.db"))
    monkeypatch.setenv(
        "TUNEFLEET_REDIS_URL", f"redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port()}/0"
    )
    assert main(["tune", "--model", "tiny", "--budget", "1"]) == 1
    err = capsys.readouterr().err
    assert "redis" in err.lower() and REDIS_PASSWORD not in err, err
    # an operator tune ignores the env's Redis (only a --redis typed with it is an error)
    assert main(["tune", "matmul", "--shape", "m=oops"]) == 2
    assert "--redis" not in capsys.readouterr().err


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.slow
def test_the_rendered_entrypoint_runs_a_job_to_done_with_the_pods_env(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres_url: str, redis_url: str,
) -> None:  # fmt: skip
    """What a RayJob's pod does: run the entrypoint through a shell (as Ray does) with only
    the env the manifests give (the database and Redis URLs): the job runs to done in
    PostgreSQL and its events reach Redis."""
    args = ["--model", "tiny", "--budget", "2", "--phase", "decode", "--batch-size", "2"]
    _, rayjob = dry_run(capsys, *args)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TUNEFLEET_DB_URL": postgres_url,
        "TUNEFLEET_REDIS_URL": redis_url,
        "TUNEFLEET_CACHE_DIR": str(tmp_path / "cache"),
    }
    done = subprocess.run(rayjob["spec"]["entrypoint"], shell=True, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    match = re.search(r"^job (\d+): done, 2/2 trials", done.stdout, re.MULTILINE)
    assert match, done.stdout
    job_id = int(match.group(1))
    with RecordStore.open(postgres_url) as store:
        info = store.get_job(job_id)
    assert info is not None and info.status == "done"
    assert JobConfig.from_json(info.config) == job_config(
        "tiny", target="cpu", budget=2, time_text=None, phase_text="decode", set_text="",
        scheduler="gradient", strategy="evolutionary", seed=0, batch_size=2,
    )  # fmt: skip
    with open_fleet_state(redis_url) as fleet:
        kinds = [e.fields.get("type") for e in fleet.read_events(str(job_id), "0", count=1000)]
    assert kinds[0] == "start" and kinds[-1] == "end", kinds


def test_no_pipeline_travels_into_the_entrypoint(capsys: pytest.CaptureFixture[str]) -> None:
    _, rayjob = dry_run(capsys, "--model", "tiny", "--budget", "4", "--no-pipeline")
    argv = shlex.split(rayjob["spec"]["entrypoint"])
    assert tune.make_context("tune", argv[2:]).params["no_pipeline"] is True
    _, plain = dry_run(capsys, "--model", "tiny", "--budget", "4")
    assert "--no-pipeline" not in plain["spec"]["entrypoint"]
