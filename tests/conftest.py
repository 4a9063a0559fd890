"""Shared pytest set-up: server URLs for the postgres/redis/ray_head markers and GPU detection.

Server-backed tests read their URL from TUNEFLEET_TEST_POSTGRES_URL / TUNEFLEET_TEST_REDIS_URL
(exported by .ci/services.sh) and TUNEFLEET_TEST_RAY_ADDRESS (the Ray head .ci/run starts).
Where a URL is absent those tests skip with the reason; where it is set, a skip of such a test
is turned into a failure so CI can never pass without the server. Tests marked `prometheus` or
`chromium` need that binary on PATH the same way: they skip without it, and a skip fails where
TUNEFLEET_TEST_PROMETHEUS / TUNEFLEET_TEST_CHROMIUM is set (as .ci/run does). `own_redis` is
a redis-server of a test's own, for tests that kill it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SERVER_URLS = {
    "postgres": "TUNEFLEET_TEST_POSTGRES_URL",
    "redis": "TUNEFLEET_TEST_REDIS_URL",
    "ray_head": "TUNEFLEET_TEST_RAY_ADDRESS",
}

# marker -> (the environment variable that makes a skip fail, the binary it needs)
TOOLS = {
    "prometheus": ("TUNEFLEET_TEST_PROMETHEUS", "prometheus"),
    "chromium": ("TUNEFLEET_TEST_CHROMIUM", "chromium"),
}


@cache
def cuda_device_count() -> int:
    """Number of CUDA devices visible here, without requiring pycuda."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        return cuda.Device.count()
    except Exception:  # pycuda absent, or no driver: fall back to nvidia-smi
        pass
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, env in SERVER_URLS.items():
            if item.get_closest_marker(marker) and not os.environ.get(env):
                item.add_marker(pytest.mark.skip(reason=f"{env} is not set (no {marker} server)"))
        for marker, (_, binary) in TOOLS.items():
            if item.get_closest_marker(marker) and shutil.which(binary) is None:
                item.add_marker(pytest.mark.skip(reason=f"{binary} is not on PATH"))
        if item.get_closest_marker("gpu") and cuda_device_count() == 0:
            item.add_marker(pytest.mark.skip(reason="no CUDA device on this machine"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    for marker, env in SERVER_URLS.items():
        if item.get_closest_marker(marker) and os.environ.get(env):
            report.outcome = "failed"
            report.longrepr = f"{env} is set but this {marker} test was skipped: {report.longrepr}"
            return
    for marker, (env, _) in TOOLS.items():
        if item.get_closest_marker(marker) and os.environ.get(env):
            report.outcome = "failed"
            report.longrepr = f"{env} is set but this {marker} test was skipped: {report.longrepr}"
            return


@pytest.fixture
def postgres_url() -> str:
    """URL of the throwaway PostgreSQL database for tests marked `postgres`."""
    url = os.environ.get(SERVER_URLS["postgres"])
    if not url:
        pytest.skip(f"{SERVER_URLS['postgres']} is not set")
    return url


@pytest.fixture
def redis_url() -> str:
    """URL of the throwaway Redis database for tests marked `redis`."""
    url = os.environ.get(SERVER_URLS["redis"])
    if not url:
        pytest.skip(f"{SERVER_URLS['redis']} is not set")
    return url


@pytest.fixture
def ray_head_address() -> str:
    """Job-server address (http://host:port) of the running Ray head for tests marked
    `ray_head`."""
    address = os.environ.get(SERVER_URLS["ray_head"])
    if not address:
        pytest.skip(f"{SERVER_URLS['ray_head']} is not set")
    return address


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway redis-server on a free loopback port, password `pw-own`, no persistence."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is not on PATH (the redis-marked tests need it)"
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path), "--requirepass", "pw-own"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)
