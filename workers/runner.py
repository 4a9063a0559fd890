"""The runner: measure candidates in a supervised worker process that is replaced on failure.

A kernel that segfaults, faults on the GPU (killing the CUDA context) or hangs takes down
only the worker process. The supervisor records run_error or timeout, kills what is left,
starts a fresh worker on the next candidate, and goes on. A worker is a fresh interpreter
(`python -c`), so it inherits no CUDA or OpenMP state and never re-imports the caller's
main module; it talks to its supervisor over a socket pair.

Every result names the device the worker measured on and that device's target fingerprint,
detected inside the worker process, so the tuner files it under the target that made it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from tunefleet.workers.results import MeasureResult, RunInput, Status
from tunefleet.workers.targets import Target, TargetKind

# OpenMP settings of a worker (libgomp): spin only briefly at a barrier before sleeping, and
# keep each thread on its own core. With the default spin (or OMP_WAIT_POLICY=ACTIVE) a
# thread spinning at the closing barrier holds the core its descheduled peer needs, and a
# parallel kernel sharing two cores with another job reads whole scheduler ticks slower;
# PASSIVE does not collapse but doubles a 0.1 ms kernel's quiet time (docs/workers.md).
OPENMP_ENV: tuple[tuple[str, str], ...] = (
    ("GOMP_SPINCOUNT", "10000"),
    ("OMP_PROC_BIND", "close"),
    ("OMP_PLACES", "cores"),
)
_WORKER_DEATH_GRACE_S = 5.0
_PREPARED = "\0prepared"  # the worker's "inputs are ready" message, never a death reason


@dataclass(frozen=True)
class RunnerConfig:
    """Which device a runner measures on and how long a fresh worker may take to start.

    `simulated_target` is for simulated fleets and tests only: the worker then reports that
    target's device and fingerprint as its own instead of the ones it detects.
    `worker_env` is set in the worker's environment when it starts (over the caller's), so
    the OpenMP runtime reads it before any kernel runs.
    """

    device: str = "cpu"  # a TargetKind value: "cpu" | "cuda"
    device_index: int = 0
    cache_dir: str = ".tunefleet/cache"
    start_timeout_s: float = 120.0
    prepare_timeout_s: float = 300.0
    simulated_target: Target | None = None
    worker_env: tuple[tuple[str, str], ...] = OPENMP_ENV

    @property
    def kind(self) -> TargetKind:
        return TargetKind(self.device)


class Runner:
    """Measures one candidate at a time on one device, surviving whatever the kernel does."""

    def __init__(self, config: RunnerConfig) -> None:
        self.config = config
        self._proc: Any = None
        self._conn: Connection | None = None
        self._device_name = ""
        self._fingerprint = ""
        self._lock = threading.Lock()
        self.restarts = 0

    def run(self, inp: RunInput) -> MeasureResult:
        """Check and time one artifact; every outcome comes back as a MeasureResult."""
        with self._lock:
            start = time.perf_counter()
            result = self._run(inp)
            if result.device == "":
                result = _replace(result, device=self._device_name)
            if result.target_fingerprint == "":
                result = _replace(result, target_fingerprint=self._fingerprint)
            if result.run_s == 0.0:
                result = _replace(result, run_s=time.perf_counter() - start)
            return result

    def close(self) -> None:
        """Stop the worker process (politely, then by force)."""
        with self._lock:
            self._stop(polite=True)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- supervision ------------------------------------------------------------------------

    def _run(self, inp: RunInput) -> MeasureResult:
        failure = self._ensure_worker()
        if failure is not None:
            return MeasureResult(Status.RUN_ERROR, message=failure)
        conn = self._conn
        assert conn is not None
        try:
            conn.send(inp)
        except (BrokenPipeError, OSError) as err:
            self._stop(polite=False)
            return MeasureResult(Status.RUN_ERROR, message=f"worker unreachable: {err}")
        # first message: inputs are ready (drawing them is not the kernel's time)
        reply = self._receive(self.config.prepare_timeout_s)
        if reply is None:
            return self._timed_out("preparing inputs", self.config.prepare_timeout_s)
        if isinstance(reply, MeasureResult):
            return reply
        if reply != _PREPARED:
            return self._died(reply)
        reply = self._receive(inp.config.timeout_s)
        if reply is None:
            return self._timed_out("measuring", inp.config.timeout_s)
        if isinstance(reply, str):
            if reply == _PREPARED:
                self._stop(polite=False)
                return self._died("sent 'prepared' twice")
            return self._died(reply)
        return reply

    def _receive(self, timeout_s: float) -> Any:
        """The next message; None on timeout; a str describing how the worker died."""
        conn = self._conn
        assert conn is not None
        try:
            if not conn.poll(timeout_s):
                return None
            kind, payload = conn.recv()
        except (EOFError, OSError):
            return self._death_reason()
        if kind == "result":
            result, fatal = payload
            if fatal:
                self._stop(polite=False)
                self.restarts += 1
            return result
        if kind == "prepared":
            return _PREPARED
        self._stop(polite=False)
        return f"unexpected message {kind!r}"

    def _ensure_worker(self) -> str | None:
        """Start a worker if none is alive; an error message when it cannot start."""
        if self._proc is not None and self._proc.poll() is None:
            return None
        self._stop(polite=False)
        parent_sock, child_sock = socket.socketpair()
        fd = child_sock.fileno()
        code = f"from tunefleet.workers.runner import worker_entry; worker_entry({fd})"
        # the caller's import path, so a source checkout works without being installed;
        # stdout is discarded so a kernel that prints cannot corrupt the caller's output
        env = dict(os.environ)
        env.update(self.config.worker_env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        child_sock.close()
        parent = Connection(parent_sock.detach())
        self._proc, self._conn = proc, parent
        try:
            parent.send(self.config)
        except OSError as err:
            self._stop(polite=False)
            return f"worker failed to start: {err}"
        try:
            if not parent.poll(self.config.start_timeout_s):
                self._stop(polite=False)
                return f"worker did not start within {self.config.start_timeout_s:g}s"
            kind, payload = parent.recv()
        except (EOFError, OSError):
            reason = self._death_reason()
            return f"worker failed to start: {reason}"
        if kind != "ready":
            self._stop(polite=False)
            return f"worker failed to start: {payload}"
        self._device_name, self._fingerprint = payload
        return None

    def _timed_out(self, phase: str, limit: float) -> MeasureResult:
        self._stop(polite=False)
        self.restarts += 1
        message = f"no result after {limit:g}s while {phase}; worker killed and replaced"
        return MeasureResult(Status.TIMEOUT, message=message)

    def _died(self, reason: str) -> MeasureResult:
        self.restarts += 1
        return MeasureResult(Status.RUN_ERROR, message=f"worker died: {reason}")

    def _death_reason(self) -> str:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(_WORKER_DEATH_GRACE_S)
            except subprocess.TimeoutExpired:
                code = None
        self._stop(polite=False)
        if code is None:
            return "connection lost"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with code {code}"

    def _stop(self, polite: bool) -> None:
        proc, conn = self._proc, self._conn
        self._proc, self._conn = None, None
        if conn is not None:
            if polite and proc is not None and proc.poll() is None:
                try:
                    conn.send(None)
                except OSError:
                    pass
            conn.close()
        if proc is not None:
            if polite:
                try:
                    proc.wait(2.0)
                except subprocess.TimeoutExpired:
                    pass
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(_WORKER_DEATH_GRACE_S)
            except subprocess.TimeoutExpired:
                pass


def _replace(result: MeasureResult, **changes: Any) -> MeasureResult:
    from dataclasses import replace

    return replace(result, **changes)


def _make_measurer(config: RunnerConfig) -> Any:
    try:
        kind = config.kind
    except ValueError:
        raise RuntimeError(f"unknown device {config.device!r}; use 'cpu' or 'cuda'") from None
    if kind.is_cpu:
        from tunefleet.workers.cpu_runner import CpuMeasurer

        return CpuMeasurer(config.cache_dir)
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            "pycuda is not installed; install the extra: pip install 'tunefleet[cuda]'"
        ) from err
    from tunefleet.workers.cuda_runner import CudaMeasurer

    return CudaMeasurer(config.device_index)


def worker_entry(fd: int) -> None:
    """Entry point of a worker interpreter: adopt the socket, read the config, serve."""
    conn = Connection(fd)
    worker_main(conn, conn.recv())


def worker_main(conn: Connection, config: RunnerConfig) -> None:
    """The worker process: receive RunInputs, answer 'prepared' then the result, until None."""
    try:
        measurer = _make_measurer(config)
    except Exception as err:  # reported to the supervisor as a start failure
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    identity: Target = config.simulated_target or measurer.target
    stamp = {"device": identity.device, "target_fingerprint": identity.fingerprint}
    conn.send(("ready", (identity.device, identity.fingerprint)))
    # a GPU error may leave the device's context unusable: such a worker is replaced
    fragile = config.kind.is_gpu
    while True:
        try:
            inp = conn.recv()
        except (EOFError, OSError):
            return
        if inp is None:
            break
        start = time.perf_counter()
        try:
            prepared = measurer.data(inp)
        except Exception as err:  # a bad problem is that candidate's run_error
            message = f"cannot prepare inputs: {type(err).__name__}: {err}"
            result = MeasureResult(Status.RUN_ERROR, message=message, **stamp)
            conn.send(("result", (result, fragile)))
            if fragile:
                return
            continue
        conn.send(("prepared", None))
        try:
            result, fatal = measurer.measure(inp, prepared)
        except Exception as err:  # never lose the worker to one candidate
            detail = traceback.format_exception_only(err)[-1].strip()
            result = MeasureResult(
                Status.RUN_ERROR,
                message=f"runner error: {detail}",
                run_s=time.perf_counter() - start,
            )
            fatal = fragile
        conn.send(("result", (_replace(result, **stamp), fatal)))
        if fatal:
            return
    close = getattr(measurer, "close", None)
    if close is not None:
        close()
