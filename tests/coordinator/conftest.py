"""Fixtures of the coordinator tests: the CPU target and a local executor (one per module, so a
module may close it), and a throwaway redis-server of their own, to kill."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunefleet.workers import BuildConfig, Executor, Target, create_executor, resolve_target


@pytest.fixture(scope="module")
def cpu() -> Target:
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc")
    return resolve_target("cpu")


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory, cpu: Target) -> Iterator[Executor]:
    cache = tmp_path_factory.mktemp("coordinator-kernels")
    with create_executor("local", BuildConfig(cache_dir=str(cache), timeout_s=60)) as ex:
        yield ex


def free_port() -> int:
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
