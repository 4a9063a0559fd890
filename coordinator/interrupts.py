"""SIGINT and SIGTERM for every command: a clean stop first, an immediate exit on the second.

The first signal ends every process the command started (build workers, runner workers,
compilers; see `process_tree`) and raises `Interrupted`, a
KeyboardInterrupt, in the main thread, so the command unwinds as after Ctrl-C: `tune`
commits the trials that finished and drops the rest. SIGTERM (how Kubernetes and Ray stop a
pod or job) gets the same treatment as Ctrl-C. A second signal while that clean-up runs
kills the children again and leaves at once with `os._exit`, printing one line (a SIGTERM
within a second of the first SIGTERM is taken as the same request, not a second one). The
multiprocessing resource tracker then unlinks the semaphores the killed pools held; its
warning about them is silenced (through the interpreter flags it is started with), since
nothing is left behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import InvalidStateError
from contextlib import contextmanager
from types import FrameType

from .process_tree import end_children

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A second SIGTERM this soon after the first is the same request delivered twice: `timeout`
# and process managers signal both the command and its process group.
SIGTERM_ECHO_S = 1.0
# The resource tracker copies -W options from sys.warnoptions when it starts.
QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived; `signum` says which, `at` when (monotonic, before any child was
    ended: results that came back later may be casualties of the stop)."""

    def __init__(self, signum: int, at: float | None = None) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.at = time.monotonic() if at is None else at


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as described in the module doc inside the block."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    if QUIET_TRACKER not in sys.warnoptions:
        sys.warnoptions.append(QUIET_TRACKER)
    received: list[int] = []
    first_at: list[float] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        if received:
            repeated = signum == signal.SIGTERM == received[0]
            if repeated and time.monotonic() - first_at[0] < SIGTERM_ECHO_S:
                return  # the same stop sent to the process and to its group (`timeout`, Ray)
            end_children()
            name = signal.Signals(signum).name
            line = f"tunefleet: stopped at once by a second {name}; work in flight is lost\n"
            os.write(2, line.encode())
            os._exit(exit_code(received[0]))
        received.append(signum)
        first_at.append(time.monotonic())
        threading.excepthook = _quiet_broken_pool(threading.excepthook)
        end_children()
        raise Interrupted(signum, first_at[0])

    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        if not received:  # after a stop the handler stays: a late signal still exits at once
            for signum, old in previous.items():
                signal.signal(signum, old)
        elif received[0] == signal.SIGTERM:
            # the command is leaving: an echo of the stop landing while the interpreter
            # finishes (when Python's handlers are gone) must not turn 143 into a kill
            signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _quiet_broken_pool(
    previous: Callable[[threading.ExceptHookArgs], object],
) -> Callable[[threading.ExceptHookArgs], None]:
    """A thread excepthook that drops the InvalidStateError a process pool's manager thread
    raises when the workers `end_children` killed break the pool while the command cancels
    its queued futures (CPython gh-107219, fixed in 3.12); every other error goes on."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if not isinstance(args.exc_value, InvalidStateError):
            previous(args)

    return hook
